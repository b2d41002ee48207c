"""The pruning engine: hooks, masks, rows-only scoring and the pruned KV cache."""
