"""An app outside callers push on: long calls to wait on and cancel, and large bodies to sum."""

import time

import raygpu

app = raygpu.App("outside")


@app.function(scaledown_window=30, max_containers=2)
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function(scaledown_window=30, max_containers=1, max_inputs=4)
def total(values: list[float]) -> float:
    return sum(values)
