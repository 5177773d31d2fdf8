"""A torch model deployment with three models (their weights written by the test), batching and an LRU of 2."""

import os
from pathlib import Path

import torch

import raygpu

WEIGHTS = Path(os.environ.get("RAYGPU_TEST_WEIGHTS", "/nonexistent"))

app = raygpu.App("models")


def make_scaler() -> torch.nn.Module:
    return torch.nn.Linear(4, 1, bias=False)


app.torch_model(
    "scaler",
    factory=make_scaler,
    weights={"a": WEIGHTS / "a.safetensors", "b": WEIGHTS / "b.pt", "c": WEIGHTS / "c.safetensors"},
    max_models=2,
    max_batch_size=8,
    batch_wait_timeout_s=0.05,
    gpu=1,
    scaledown_window=120,
    max_inputs=64,
)

app.torch_model(
    "cached", factory=make_scaler, weights=WEIGHTS / "cached.safetensors", gpu=1, scaledown_window=120, retries=2
)
