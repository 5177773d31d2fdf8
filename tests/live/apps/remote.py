"""An app deployed from a machine that reaches the cluster only through its gateway: a function
and a torch model whose weights file (written by the test) is uploaded over the gateway."""

import os

import torch

import raygpu

app = raygpu.App("remote")


@app.function(scaledown_window=5)
def greet(name: str = "world") -> str:
    return f"hello {name}"


def make_scaler() -> torch.nn.Module:
    return torch.nn.Linear(4, 1, bias=False)


app.torch_model(
    "scaler",
    factory=make_scaler,
    weights=os.environ.get("RAYGPU_TEST_REMOTE_WEIGHTS", "/nonexistent.safetensors"),
    gpu=1,
    scaledown_window=5,
)
