"""The cluster-wide HTTP gateway: routing and body rules (pure), admission and arrival records
(pure), HTTP plumbing, the calls to replicas with their resends (dispatch), spawned calls, the admin
proxy, and the gateway's Serve app (server.py)."""
