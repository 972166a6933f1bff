"""Model releases: building a signed release from a run, the release store and index, trending counts."""
