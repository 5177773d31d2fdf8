"""The load a function puts on its replicas, measured from what the policy already sees: the
arrivals it is told of and the calls in flight at each decision. Pure (no Ray).

`ArrivalRate` is the recent arrival rate (an exponentially decaying count). `ServiceTime` is how
long one call keeps a replica slot busy:
Between two decisions, calls completed = calls in flight before + arrivals since - calls in flight
now, and slot-seconds worked = calls in flight (at most the running slots) times the time between.
Their decayed ratio is the service time: it sizes scale-ups by the work queued, not by the number of
queued calls (a backlog of 500 one-second calls is a few replicas of work, not 500 replicas).
"""

from __future__ import annotations

import math

SERVICE_MEMORY_S = 300.0  # the estimate follows the last few minutes of work
MIN_COMPLETIONS = 3.0  # completions seen before the estimate is trusted


class ArrivalRate:
    """Arrivals per second over about the last `tau_s` seconds."""

    def __init__(self, tau_s: float):
        self.tau_s = max(0.1, tau_s)
        self.level = 0.0
        self.at: float | None = None

    def observe_arrival(self, t: float) -> None:
        self.level = self.at_time(t) + 1.0 / self.tau_s
        self.at = t if self.at is None else max(self.at, t)

    def at_time(self, now: float) -> float:
        if self.at is None:
            return 0.0
        return self.level * math.exp(-max(0.0, now - self.at) / self.tau_s)


class ServiceTime:
    def __init__(self) -> None:
        self.arrivals = 0
        self.inflight = 0.0
        self.slots = 0
        self.at: float | None = None
        self.worked_s = 0.0  # decayed slot-seconds of work
        self.completed = 0.0  # decayed completions

    def observe_arrival(self) -> None:
        self.arrivals += 1

    def observe(self, now: float, inflight: float, slots: int) -> None:
        """One decision's view: calls in flight and running slots (replicas x inputs each)."""
        if self.at is not None and now > self.at:
            dt = now - self.at
            decay = math.exp(-dt / SERVICE_MEMORY_S)
            done = max(0.0, self.inflight + self.arrivals - inflight)
            self.worked_s = self.worked_s * decay + min(self.inflight, self.slots) * dt
            self.completed = self.completed * decay + done
        elif self.at is not None:  # same instant: only completions to count
            self.completed += max(0.0, self.inflight + self.arrivals - inflight)
        self.at, self.inflight, self.slots, self.arrivals = now, inflight, slots, 0

    def seconds(self) -> float | None:
        """Mean slot-seconds per call, or None until enough calls completed."""
        if self.completed < MIN_COMPLETIONS or self.worked_s <= 0:
            return None
        return self.worked_s / self.completed
