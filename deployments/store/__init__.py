"""The control-plane store: SQLite state (`db`) behind one detached head-node actor (`actor`)."""
