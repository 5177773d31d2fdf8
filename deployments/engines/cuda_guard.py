"""CUDA initialisation refused while code runs that must not pick a GPU: an app's module imported and
its `snap=True` enter hooks run in a warm worker before Ray assigns the replica its GPU (initialising
CUDA there would fix which GPUs the process sees). Torch only: no Ray."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from typing import Any


class CudaBeforeGpuError(RuntimeError):
    """Code initialised CUDA where no GPU is assigned yet."""


@contextlib.contextmanager
def cuda_blocked(what: str) -> Iterator[None]:
    """Within the block, initialising CUDA raises CudaBeforeGpuError naming `what`. A process that
    has no torch, or has initialised CUDA already, runs the block as it is."""
    if "torch" not in sys.modules and importlib.util.find_spec("torch") is None:
        yield
        return
    import torch.cuda

    if torch.cuda.is_initialized():
        yield
        return
    original = torch.cuda._lazy_init

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise CudaBeforeGpuError(
            f"{what} initialised CUDA before the replica has its GPU: move the GPU work (.to('cuda'), "
            "torch.cuda calls) into a plain @raygpu.enter() hook"
        )

    torch.cuda._lazy_init = refuse
    try:
        yield
    finally:
        torch.cuda._lazy_init = original
