"""Functions for the live autoscaling tests."""

import time

import raygpu

app = raygpu.App("scaling")


@app.function(scaledown_window=5)
def timer(tick: int) -> int:
    return tick


@app.function(scaledown_window=5)
def sparse(tick: int) -> int:
    return tick


@app.function(scaledown_window=5, max_inputs=1, max_containers=4, max_queue=200)
def work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.function(scaledown_window=30, max_inputs=1, max_containers=4, max_queue=100)
def burst(i: int) -> int:
    time.sleep(0.2)
    return i
