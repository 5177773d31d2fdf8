"""The cluster-wide HTTP gateway: routing (pure), OpenAPI (pure), HTTP plumbing and the Serve app."""
