"""A torch model on a GPU type only the fake node pools have; its weights file is written, then
deleted, by the test."""

import os

import torch

import raygpu

app = raygpu.App("pooledmodel")


def make_scaler() -> torch.nn.Module:
    return torch.nn.Linear(4, 1, bias=False)


app.torch_model(
    "scaler",
    factory=make_scaler,
    weights=os.environ.get("RAYGPU_TEST_POOLED_WEIGHTS", "/nonexistent.safetensors"),
    gpu="A10G",
    scaledown_window=3,
)
