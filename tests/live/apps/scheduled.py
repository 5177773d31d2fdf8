"""Scheduled functions: a short period, a run that outlasts its period, and a nightly cron."""

import os
import time

import raygpu

app = raygpu.App("scheduled")


@app.function(schedule=raygpu.Period(seconds=20), scaledown_window=300)
def tick() -> dict:
    return {"ran_at": time.time(), "pid": os.getpid()}


@app.function(schedule=raygpu.Period(seconds=10), timeout=60)
def overrun() -> float:
    time.sleep(14)
    return time.time()


@app.function(schedule=raygpu.Cron("0 3 * * *", timezone="Europe/Berlin"))
def nightly(limit: int = 3) -> int:
    return limit
