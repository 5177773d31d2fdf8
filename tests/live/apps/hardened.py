"""The request-path hardening tests' app: nested and constrained models to fuzz, a user error, a
sync function that outlives its timeout, and a small bounded function for bursts at zero."""

import asyncio
import os
import time
from typing import Annotated, Literal

from pydantic import BaseModel, Field

import raygpu

app = raygpu.App("hardened")


class Line(BaseModel):
    sku: Annotated[str, Field(min_length=1, max_length=32)]
    qty: Annotated[int, Field(ge=1, le=1000)] = 1
    tags: list[str] = []


class Order(BaseModel):
    lines: list[Line]
    gift: Line | None = None
    priority: Literal["low", "high"] = "low"
    discount: Annotated[float, Field(ge=0, le=1)] | None = None


class Receipt(BaseModel):
    items: int
    order: Order
    note: str | None = None


@app.function(scaledown_window=120, max_inputs=8)
def total(order: Order, scale: float = 1.0, note: str | None = None, counts: dict[str, int] | None = None) -> Receipt:
    """Count an order's items."""
    return Receipt(items=sum(line.qty for line in order.lines), order=order, note=note)


@app.function(scaledown_window=120, max_inputs=8)
def fail(message: str) -> str:
    """Always raises: a user error answers 500 with its type and message."""
    raise ValueError(message)


@app.function(timeout=1, max_containers=1, scaledown_window=120)
def stall(seconds: float) -> dict:
    """Sleeps (in a worker thread) past its 1 s timeout when asked to."""
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}


@app.function(max_containers=2, max_inputs=2, max_queue=10, scaledown_window=2)
async def burst(x: int) -> int:
    await asyncio.sleep(0.5)
    return x
