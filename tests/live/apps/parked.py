"""Functions that go at rest out of Serve (parking) and come back on their next call."""

import raygpu

app = raygpu.App("parked")


@app.function(scaledown_window=1)
def rare(x: int = 0) -> int:
    return x * 2


@app.function(scaledown_window=1)
def other(x: int = 0) -> int:
    return x + 100


@app.function(scaledown_window=1)
def countdown(n: int = 3):
    yield from range(n, 0, -1)


@app.function(min_containers=1)
def kept(x: int = 0) -> int:
    return x
