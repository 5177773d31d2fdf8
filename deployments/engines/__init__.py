"""Model engines (PyTorch, vLLM): no Ray here, so they also run where Ray is absent."""
