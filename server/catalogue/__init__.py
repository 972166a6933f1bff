"""Catalogue writes after a release: validated items, their item-tower vectors, signed catalogue deltas."""
