"""Per-node services: the weight cache and the warm worker pool."""
