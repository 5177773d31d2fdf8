"""Functions for batches (map, starmap, `raygpu map`) and streaming generators."""

import asyncio
import time
from pathlib import Path

import raygpu

app = raygpu.App("batch")


@app.function(scaledown_window=2, max_containers=3, max_inputs=4)
def square(x: int, offset: int = 0, pause: float = 0.0) -> int:
    time.sleep(pause)
    if x == 13:
        raise ValueError("13 is unlucky")
    return x * x + offset


@app.cls(scaledown_window=5)
class Scaler:
    @raygpu.enter()
    def load(self):
        self.factor = 3

    @raygpu.method()
    def mul(self, x: int, y: int = 1) -> int:
        return x * y * self.factor

    @raygpu.method()
    def words(self, text: str):
        for word in text.split():
            yield word.upper()


@app.function(scaledown_window=5)
def count(n: int, delay: float = 0.0):
    """Yield n items, one every `delay` seconds, each with the time it was produced."""
    for i in range(n):
        if i:
            time.sleep(delay)
        yield {"i": i, "at": time.time()}


@app.function(scaledown_window=5)
async def count_async(n: int):
    for i in range(n):
        await asyncio.sleep(0.01)
        yield i


@app.function(scaledown_window=5)
def fail_after(n: int):
    yield from range(n)
    raise ValueError("broke after its items")


@app.function(scaledown_window=5)
def ticker(marker: str):
    """Yield forever; say when it was stopped."""
    try:
        while True:
            yield time.time()
            time.sleep(0.05)
    finally:
        Path(marker).write_text(str(time.time()))


@app.function(scaledown_window=5)
async def ticker_async(marker: str):
    try:
        while True:
            yield time.time()
            await asyncio.sleep(0.05)
    finally:
        Path(marker).write_text(str(time.time()))


@app.function(scaledown_window=30)
def streamed(n: int, delay: float):
    """A stream whose replica the bill must count busy throughout."""
    for i in range(n):
        time.sleep(delay)
        yield i
