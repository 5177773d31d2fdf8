"""The cluster-wide HTTP gateway: routing and body rules (pure), the arrival buffer, HTTP plumbing
and the gateway's Serve app (server.py)."""
