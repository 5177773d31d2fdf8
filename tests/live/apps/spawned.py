"""Functions spawned in the background: polled, waited on, cancelled, reported to webhooks."""

import time

import raygpu

app = raygpu.App("spawned")


@app.function(scaledown_window=5)
def slow_add(a: int, b: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return a + b


@app.function(scaledown_window=5)
def explode(message: str) -> None:
    raise RuntimeError(message)


@app.cls(scaledown_window=5)
class Doubler:
    @raygpu.method()
    def twice(self, x: int) -> int:
        return 2 * x


@app.function(scaledown_window=5)
def numbers(n: int):
    yield from range(n)
