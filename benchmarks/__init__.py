"""Ratio benchmarks against plain Ray Serve, vLLM's own server and baseline policies: `python -m benchmarks.NAME`."""
