"""The Serve deployments that run units: one base, one module per kind of replica, and the
builder of a user app's Serve application."""
