"""Benchmarks and diagnostics (commands that print figures; not tests, not the product)."""
