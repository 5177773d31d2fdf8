"""The scaling decision: a pure policy core, its Ray Serve adapter, and (later) the trace simulator."""
