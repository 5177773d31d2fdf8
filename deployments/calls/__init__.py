"""Spawned calls: their records, webhooks and the runner that runs them."""
