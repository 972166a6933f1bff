"""The training side of a node: one round's clipped update sums (batched per-user gradients), record-level
DP-SGD with Opacus, and the participation counts behind caps."""
