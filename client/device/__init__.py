"""The device side of fedhome: verified release cache, local event store, on-device ranking (no torch)."""
