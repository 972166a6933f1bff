"""fedhome's shared core: model, data, configuration, privacy math, signing. Imports nothing of ours."""
