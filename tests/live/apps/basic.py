"""Functions that exercise every status code of the request path."""

import asyncio
import os
import time

from pydantic import BaseModel

import raygpu

app = raygpu.App("basic")


class Point(BaseModel):
    x: int
    y: int


@app.function(scaledown_window=2)
def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b


@app.function(scaledown_window=30)
def norm(p: Point, scale: float = 1.0) -> float:
    return (p.x**2 + p.y**2) ** 0.5 * scale


@app.function(scaledown_window=30)
def fail(message: str) -> None:
    raise ValueError(message)


@app.function(scaledown_window=30, timeout=1)
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@app.function(scaledown_window=30, timeout=1)
async def slow_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@app.function(scaledown_window=30, max_inputs=1, max_containers=1, max_queue=1)
def busy(seconds: float) -> str:
    time.sleep(seconds)
    return "ok"


@app.function(scaledown_window=60)
def cold(x: int) -> int:
    """Never called by the error tests: it must stay at zero replicas."""
    return x


@app.function(gpu="H100", scaledown_window=30)
def gpu_ids() -> list[str]:
    import ray

    return [str(g) for g in ray.get_gpu_ids()]


@app.function(scaledown_window=30)
def env_value(name: str) -> str | None:
    return os.environ.get(name)


@app.function(scaledown_window=30)
def crash_once(marker: str) -> int:
    """Kills its own replica the first time it sees `marker`; the call, resent, then succeeds."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return os.getpid()


@app.function(scaledown_window=30)
def crash_always() -> None:
    os._exit(1)


@app.cls(scaledown_window=30)
class Counter:
    @raygpu.enter()
    def start(self) -> None:
        self.count = 100

    @raygpu.method()
    def incr(self, by: int = 1) -> int:
        self.count += by
        return self.count


@app.cls(scaledown_window=30)
class BrokenEnter:
    @raygpu.enter()
    def load(self) -> None:
        raise FileNotFoundError("weights.bin is missing")

    @raygpu.method()
    def predict(self) -> int:
        return 1
