"""Data: the canonical catalogue and interaction log, loaders, the synthetic shop and the evaluation split."""
