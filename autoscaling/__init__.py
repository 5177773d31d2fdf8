"""The scaling decision: a pure policy core, its per-tick decision for Serve, the Ray Serve adapter,
baselines, trace loaders and the trace simulator."""
