"""Baseline policies the simulator replays beside raygpu's, with the same two calls.

- fixed keep-alive (60 s, 10 min): scale up to the load at once, keep every replica until the
  function has been idle for the window (Modal-style platforms);
- Ray Serve's default policy with its default delays (target 2 ongoing requests per replica,
  30 s look-back, 30 s upscale delay, 600 s downscale delay, 0→1 at once);
- a Knative-KPA-like policy (60 s stable window, 6 s panic window, panic at 2x, 30 s
  scale-to-zero grace);
- the hybrid histogram policy of Shahrad et al., ATC'20 (1-minute idle-time bins up to 4 h,
  pre-warm at the 5th percentile, keep alive to the 99th, fixed 10-minute keep-alive while the
  histogram is not representative).
"""

from __future__ import annotations

import math
from collections import deque

from autoscaling.policy import NEVER, ScalingConfig


class _TimeAverage:
    """Exponentially weighted time average of a step signal (time constant `tau_s`)."""

    def __init__(self, tau_s: float):
        self.tau_s = tau_s
        self.value = 0.0
        self.level = 0.0
        self.at: float | None = None

    def update(self, now: float, level: float) -> float:
        if self.at is not None and now > self.at:
            alpha = 1 - math.exp(-(now - self.at) / self.tau_s)
            self.value += alpha * (self.level - self.value)
        self.at = now
        self.level = level
        return self.value


def _clamp(config: ScalingConfig, n: int) -> int:
    return max(config.min_replicas, min(config.max_replicas, n))


class FixedKeepAlive:
    """Each replica stays until it has been unneeded for `keep_alive_s` (per-container idle
    timeout): the count kept is the most replicas the load needed within the last window."""

    def __init__(self, config: ScalingConfig, keep_alive_s: float, name: str | None = None):
        self.config = config
        self.keep_alive_s = keep_alive_s
        self.name = name or f"fixed_{int(keep_alive_s)}s"
        self.recent: deque[tuple[float, int]] = deque()  # (time, needed), needed decreasing

    def observe_arrival(self, t: float) -> None:
        pass

    def decide(self, now: float, running: int, starting: int, inflight: float) -> tuple[int, float]:
        needed = math.ceil(inflight / self.config.inputs_per_replica) if inflight > 0 else 0
        recent = self.recent
        while recent and recent[-1][1] <= needed:
            recent.pop()
        if needed:
            recent.append((now, needed))
        while recent and recent[0][0] + self.keep_alive_s <= now:
            recent.popleft()
        if not recent:
            return _clamp(self.config, 0), NEVER
        return _clamp(self.config, max(needed, recent[0][1])), recent[0][0] + self.keep_alive_s


class RayServeDefault:
    """Ray Serve 2.60's request-based policy with its default delays and factors."""

    name = "ray_serve_default"
    target_ongoing = 2.0
    look_back_s = 30.0
    upscale_delay_s = 30.0
    downscale_delay_s = 600.0

    def __init__(self, config: ScalingConfig):
        self.config = config
        self.average = _TimeAverage(self.look_back_s)
        self.want_up_since: float | None = None
        self.want_down_since: float | None = None

    def observe_arrival(self, t: float) -> None:
        pass

    def decide(self, now: float, running: int, starting: int, inflight: float) -> tuple[int, float]:
        current = running + starting
        load = self.average.update(now, inflight)
        if current == 0:
            return (_clamp(self.config, 1), NEVER) if inflight > 0 else (_clamp(self.config, 0), NEVER)
        desired = _clamp(self.config, math.ceil(load / self.target_ongoing) if load > 1e-3 else 0)
        if desired > current:
            self.want_down_since = None
            self.want_up_since = self.want_up_since if self.want_up_since is not None else now
            if now - self.want_up_since >= self.upscale_delay_s:
                self.want_up_since = None
                return desired, NEVER
            return current, self.want_up_since + self.upscale_delay_s
        if desired < current:
            self.want_up_since = None
            self.want_down_since = self.want_down_since if self.want_down_since is not None else now
            if now - self.want_down_since >= self.downscale_delay_s:
                self.want_down_since = None
                return desired, NEVER
            # the average keeps falling while idle: look again when the delay has passed
            return current, self.want_down_since + self.downscale_delay_s
        self.want_up_since = self.want_down_since = None
        # an average above zero decays: re-check so an idle function eventually reaches zero
        return current, (now + self.look_back_s if load > 1e-3 else NEVER)


class KnativeKPA:
    """Knative's pod autoscaler: stable/panic windows on concurrency, scale-to-zero grace."""

    name = "knative"
    stable_window_s = 60.0
    panic_window_s = 6.0
    panic_threshold = 2.0
    scale_to_zero_grace_s = 30.0
    target_utilisation = 0.7

    def __init__(self, config: ScalingConfig):
        self.config = config
        self.stable = _TimeAverage(self.stable_window_s)
        self.panic = _TimeAverage(self.panic_window_s)
        self.panic_until = -NEVER
        self.zero_since: float | None = None

    def observe_arrival(self, t: float) -> None:
        pass

    def decide(self, now: float, running: int, starting: int, inflight: float) -> tuple[int, float]:
        current = running + starting
        target = self.config.inputs_per_replica * self.target_utilisation
        stable = self.stable.update(now, inflight)
        panic = self.panic.update(now, inflight)
        if inflight > 0 and current == 0:
            self.zero_since = None
            return _clamp(self.config, 1), now + 2.0
        want_stable = math.ceil(stable / target - 1e-9) if stable > 1e-3 else 0
        want_panic = math.ceil(panic / target - 1e-9) if panic > 1e-3 else 0
        if current and want_panic >= self.panic_threshold * current:
            self.panic_until = now + self.stable_window_s
        if now < self.panic_until:
            return _clamp(self.config, max(current, want_panic)), now + 2.0
        if want_stable == 0 and inflight == 0:
            self.zero_since = self.zero_since if self.zero_since is not None else now
            if now - self.zero_since >= self.scale_to_zero_grace_s:
                return _clamp(self.config, 0), NEVER
            return _clamp(self.config, max(1, min(current, 1))), self.zero_since + self.scale_to_zero_grace_s
        self.zero_since = None
        return _clamp(self.config, max(1, want_stable)), now + 2.0


class HybridHistogram:
    """ATC'20 hybrid histogram policy (1-minute bins up to 4 h, 5th/99th percentiles) for the last
    replica; replicas beyond the first follow a 60 s per-container idle timeout."""

    name = "hybrid_histogram"
    bin_s = 60.0
    range_s = 4 * 3600.0
    fallback_keep_alive_s = 600.0
    min_samples = 10
    cv_threshold = 2.0
    recompute_every = 50  # samples between percentile recomputations when only bin 0 moves

    def __init__(self, config: ScalingConfig):
        self.config = config
        self.bins = [0] * int(self.range_s / self.bin_s)
        self.sum_squares = 0
        self.samples = 0
        self.oob = 0
        self.last_arrival: float | None = None
        self.last_busy: float | None = None
        self.prewarm_s = 0.0
        self.keep_alive_s = self.fallback_keep_alive_s
        self.extra_replicas = FixedKeepAlive(config, 60.0)

    def observe_arrival(self, t: float) -> None:
        if self.last_arrival is not None:
            gap = t - self.last_arrival
            if gap >= self.range_s:
                self.oob += 1
            else:
                index = int(gap // self.bin_s)
                self.sum_squares += 2 * self.bins[index] + 1
                self.bins[index] += 1
            self.samples += 1
            if gap >= self.bin_s or self.samples % self.recompute_every == 0 or self.samples <= self.min_samples:
                self._update_windows()
        self.last_arrival = t

    def _update_windows(self) -> None:
        inside = self.samples - self.oob
        if self.samples < self.min_samples or inside <= 0 or self.oob > 0.5 * self.samples:
            self.prewarm_s, self.keep_alive_s = 0.0, self.fallback_keep_alive_s
            return
        n = len(self.bins)
        mean = inside / n
        variance = max(0.0, self.sum_squares / n - mean * mean)
        if math.sqrt(variance) / mean < self.cv_threshold:
            self.prewarm_s, self.keep_alive_s = 0.0, self.fallback_keep_alive_s
            return
        low, high = self._percentile(5), self._percentile(99)
        self.prewarm_s = low * 0.9  # the paper's 10% margins
        self.keep_alive_s = high * 1.1 - self.prewarm_s

    def _percentile(self, q: float) -> float:
        target = q / 100 * (self.samples - self.oob)
        running = 0
        for index, count in enumerate(self.bins):
            running += count
            if running >= target and count:
                return (index + 1) * self.bin_s
        return self.range_s

    def decide(self, now: float, running: int, starting: int, inflight: float) -> tuple[int, float]:
        extra, extra_check = self.extra_replicas.decide(now, running, starting, inflight)
        if inflight > 0:
            self.last_busy = now
            return _clamp(self.config, max(1, extra)), extra_check
        if self.last_busy is None or self.last_arrival is None:
            return _clamp(self.config, extra), extra_check
        if self.prewarm_s <= 0:
            until = self.last_busy + self.keep_alive_s
            if now < until:
                return _clamp(self.config, max(1, extra)), min(until, extra_check)
            return _clamp(self.config, extra), extra_check
        start = self.last_arrival + self.prewarm_s
        end = start + self.keep_alive_s
        if now < start:
            return _clamp(self.config, extra), min(start, extra_check)
        if now < end:
            return _clamp(self.config, max(1, extra)), min(end, extra_check)
        return _clamp(self.config, extra), extra_check
