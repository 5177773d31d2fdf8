"""Synthetic traffic families for judging a scaling policy on shapes it was not tuned on: Poisson
at several rates, exact and jittered periodic, diurnal, on/off bursts and periodic bursts. Each
family is a Trace of several functions with different parameters, seeded (no Ray, no I/O)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from autoscaling.traces import FunctionTrace, Trace

DAY_S = 24 * 3600.0
# Families that have structure history can learn (the 20%-below-the-frontier goal applies to them).
STRUCTURED = ("periodic", "jittered_periodic", "diurnal", "on_off_bursts", "periodic_bursts")


def _service(rng: random.Random, mean_s: float) -> float:
    return max(0.01, rng.expovariate(1.0 / mean_s))


def _function(name: str, arrivals: list[float], rng: random.Random, mean_service_s: float) -> FunctionTrace:
    arrivals.sort()
    return FunctionTrace(name, arrivals, [_service(rng, mean_service_s) for _ in arrivals], trigger="synthetic")


def poisson(rng: random.Random, duration_s: float, rate_per_s: float) -> list[float]:
    out, t = [], rng.expovariate(rate_per_s)
    while t < duration_s:
        out.append(t)
        t += rng.expovariate(rate_per_s)
    return out


def periodic(rng: random.Random, duration_s: float, period_s: float, jitter_s: float = 0.0) -> list[float]:
    phase = rng.uniform(0, period_s)
    out = []
    k = 0
    while (t := phase + k * period_s) < duration_s:
        out.append(min(max(0.0, t + (rng.gauss(0.0, jitter_s) if jitter_s else 0.0)), duration_s))
        k += 1
    return out


def diurnal(rng: random.Random, duration_s: float, peak_rate_per_s: float, trough_ratio: float = 0.05) -> list[float]:
    """A day-shaped Poisson process (thinning): the rate swings between peak and trough daily."""
    out, t = [], 0.0
    while True:
        t += rng.expovariate(peak_rate_per_s)
        if t >= duration_s:
            return out
        level = trough_ratio + (1 - trough_ratio) * 0.5 * (1 - math.cos(2 * math.pi * t / DAY_S))
        if rng.random() < level:
            out.append(t)


def on_off_bursts(
    rng: random.Random, duration_s: float, mean_on_s: float, mean_off_s: float, rate_in_burst_per_s: float
) -> list[float]:
    """Bursts of Poisson calls at random times (exponential on and off periods)."""
    out: list[float] = []
    t = rng.expovariate(1.0 / mean_off_s)
    while t < duration_s:
        end = min(duration_s, t + rng.expovariate(1.0 / mean_on_s))
        out.append(t)
        out.extend(t + x for x in poisson(rng, end - t, rate_in_burst_per_s))
        t = end + rng.expovariate(1.0 / mean_off_s)
    return sorted(out)


def periodic_bursts(
    rng: random.Random, duration_s: float, period_s: float, burst_s: float, rate_in_burst_per_s: float
) -> list[float]:
    """A burst of calls every period (a cron job fanning out): the gaps inside a burst hide the period."""
    out = []
    phase = rng.uniform(0, period_s)
    k = 0
    while (start := phase + k * period_s) < duration_s:
        out.extend(start + x for x in poisson(rng, burst_s, rate_in_burst_per_s) if start + x < duration_s)
        out.append(start)
        k += 1
    return sorted(out)


Family = Callable[[random.Random, float], list[tuple[str, list[float], float]]]


def _families() -> dict[str, Family]:
    """Each family: (function name, arrivals, mean service seconds) for a few parameter choices."""
    return {
        "poisson": lambda rng, d: [
            (f"poisson_{label}", poisson(rng, d, rate), 0.5)
            for label, rate in (("1per10s", 0.1), ("1permin", 1 / 60), ("1per5min", 1 / 300), ("1perhour", 1 / 3600))
        ],
        "periodic": lambda rng, d: [
            (f"periodic_{int(p)}s", periodic(rng, d, p), 0.5) for p in (45.0, 120.0, 300.0, 900.0, 3600.0)
        ],
        "jittered_periodic": lambda rng, d: [
            (f"jittered_{int(p)}s", periodic(rng, d, p, jitter_s=0.05 * p), 0.5) for p in (120.0, 300.0, 900.0, 3600.0)
        ],
        "diurnal": lambda rng, d: [
            (f"diurnal_peak{label}", diurnal(rng, d, rate), 0.5)
            for label, rate in (("1per10s", 0.1), ("1permin", 1 / 60), ("1per5min", 1 / 300))
        ],
        "on_off_bursts": lambda rng, d: [
            (f"bursts_on{int(on)}_off{int(off)}", on_off_bursts(rng, d, on, off, rate), 0.5)
            for on, off, rate in ((60.0, 600.0, 1.0), (300.0, 3600.0, 0.5), (30.0, 1800.0, 2.0))
        ],
        "periodic_bursts": lambda rng, d: [
            (f"cron_{int(period)}s_{int(burst)}s", periodic_bursts(rng, d, period, burst, rate), 0.5)
            for period, burst, rate in ((600.0, 30.0, 2.0), (1800.0, 60.0, 1.0), (3600.0, 120.0, 0.5))
        ],
    }


FAMILIES = tuple(_families())


def synthetic_trace(family: str, duration_s: float = DAY_S, seed: int = 0) -> Trace:
    """One family's functions over `duration_s` (a day by default), reproducible from `seed`."""
    families = _families()
    if family not in families:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(families)}")
    rng = random.Random(f"{family}:{seed}")
    functions = [
        _function(name, arrivals, rng, service) for name, arrivals, service in families[family](rng, duration_s)
    ]
    return Trace(format="synthetic", path=f"synthetic:{family}", functions=functions, duration_s=duration_s)
