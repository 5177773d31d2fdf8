"""The pure scaling policies on hand-made observations (no Ray)."""

import math

import pytest

from autoscaling.baselines import FixedKeepAlive, HybridHistogram, KnativeKPA, RayServeDefault
from autoscaling.history import ArrivalHistory
from autoscaling.policy import NEVER, RaygpuPolicy, ScalingConfig, gateway_replicas

CFG = ScalingConfig(
    min_replicas=0,
    max_replicas=8,
    inputs_per_replica=1,
    idle_window_s=10,
    downscale_delay_s=4,
    start_time_s=3,
    upscale_interval_s=2,
    predictive=False,
)


def test_zero_to_one_is_immediate_then_growth_is_bounded_per_interval():
    p = RaygpuPolicy(CFG)
    p.load_avg = 0
    assert p.decide(0.0, 0, 0, 8)[0] == 1  # 0→1 at once, whatever the load
    p.load_avg = 8.0  # a sustained load of 8
    assert p.decide(0.5, 1, 0, 8)[0] == 1  # within the interval: no new step
    assert p.decide(2.0, 1, 0, 8)[0] == 2
    assert p.decide(2.1, 2, 0, 8)[0] == 2
    assert p.decide(4.0, 2, 0, 8)[0] == 4
    assert p.decide(6.0, 4, 0, 8)[0] == 8
    assert p.decide(8.0, 8, 0, 8)[0] == 8


def test_short_backlogs_do_not_start_replicas_beyond_the_first():
    p = RaygpuPolicy(CFG)
    assert p.decide(0.0, 0, 0, 1)[0] == 1
    # a blip of 5 queued calls for 0.1 s hardly moves the start-time average
    assert p.decide(3.0, 1, 0, 5)[0] == 1
    assert p.decide(3.1, 1, 0, 0)[0] == 1


def test_scale_down_hysteresis_and_longer_last_step():
    p = RaygpuPolicy(CFG)
    p.observe_arrival(0.0)
    p.load_avg = 4.0
    p.last_upscale = -100
    p.decide(0.0, 4, 0, 4)
    # load gone: replicas beyond the first go once unneeded for downscale_delay_s (4 s)...
    assert p.decide(1.0, 4, 0, 0) == (4, 4.0)
    assert p.decide(5.0, 4, 0, 0)[0] == 1
    # ...and the last 1→0 step waits for the idle window (10 s after the last call)
    assert p.decide(9.0, 1, 0, 0) == (1, 10.0)
    assert p.decide(10.0, 1, 0, 0) == (0, NEVER)


def test_no_oscillation_under_steady_low_traffic():
    p = RaygpuPolicy(CFG)
    decisions = []
    replicas = 0
    for second in range(60):
        t = float(second)
        p.observe_arrival(t)
        replicas = p.decide(t, replicas, 0, 1)[0]
        decisions.append(replicas)
        replicas = p.decide(t + 0.05, replicas, 0, 0)[0]
        decisions.append(replicas)
    assert set(decisions) == {1}


def test_min_max_and_buffer():
    cfg = ScalingConfig(
        min_replicas=1,
        max_replicas=3,
        buffer_replicas=1,
        inputs_per_replica=1,
        idle_window_s=10,
        upscale_interval_s=0,
        predictive=False,
    )
    p = RaygpuPolicy(cfg)
    assert p.decide(0.0, 1, 0, 1)[0] == 2  # one busy + one buffer
    p.load_avg = 100
    assert p.decide(1.0, 2, 0, 100)[0] == 3  # capped at max
    assert p.decide(20.0, 3, 0, 0)[0] == 3  # extra replicas wait one start time (30 s)...
    assert p.decide(100.0, 3, 0, 0)[0] == 1  # ...and the count never goes below min


def test_periodic_function_is_prewarmed_before_the_next_call():
    cfg = ScalingConfig(idle_window_s=5, start_time_s=3, predictive=True)
    p = RaygpuPolicy(cfg)
    for k in range(6):
        p.observe_arrival(20.0 * k)
    last = 100.0
    assert p.plan.basis == "period"
    assert p.decide(last + 2.5, 1, 0, 0)[0] == 1  # lingering one start time (3 s)
    replicas, next_check = p.decide(last + 6.0, 1, 0, 0)
    assert replicas == 0 and next_check < last + 20 - 3  # asks again in time to pre-warm
    assert p.decide(next_check, 0, 0, 0)[0] == 1
    assert p.decide(last + 19.9, 1, 0, 0)[0] == 1  # warm when the call is due


def test_random_sparse_traffic_falls_back_to_the_idle_window():
    cfg = ScalingConfig(idle_window_s=5, start_time_s=3, predictive=True)
    p = RaygpuPolicy(cfg)
    for t in [0.0, 13.0, 41.0, 50.0, 83.0]:
        p.observe_arrival(t)
    assert p.plan.basis == "fixed"
    assert p.decide(87.0, 1, 0, 0)[0] == 1
    assert p.decide(88.1, 1, 0, 0)[0] == 0


def test_histogram_counts_gaps_and_finds_a_timer_period():
    h = ArrivalHistory()
    for k in range(50):
        h.observe(100.0 * k)
    assert h.gaps_seen == 49 and h.period() == pytest.approx(100.0)
    again = ArrivalHistory.from_dict(h.to_dict())
    assert again.decayed() == h.decayed() and again.period() == h.period()


def test_learned_state_round_trips():
    p = RaygpuPolicy(ScalingConfig(start_time_s=3))
    for k in range(8):
        p.observe_arrival(30.0 * k)
    q = RaygpuPolicy.from_dict(p.config, p.to_dict())
    assert q.plan == p.plan and q.history.period() == p.history.period()


def test_fixed_keep_alive_releases_each_replica_after_its_own_window():
    f = FixedKeepAlive(ScalingConfig(), 60.0)
    assert f.decide(0.0, 0, 0, 3)[0] == 3
    assert f.decide(10.0, 3, 0, 1) == (3, 60.0)
    assert f.decide(60.0, 3, 0, 0) == (1, 70.0)
    assert f.decide(70.0, 1, 0, 0) == (0, NEVER)


def test_baselines_scale_up_from_zero_and_back():
    cfg = ScalingConfig()
    for policy in (RayServeDefault(cfg), KnativeKPA(cfg), HybridHistogram(cfg)):
        policy.observe_arrival(0.0)
        assert policy.decide(0.0, 0, 0, 1)[0] == 1, policy.name
        replicas, t = 1, 1.0
        while replicas and t < 20_000:
            replicas, next_check = policy.decide(t, replicas, 0, 0)
            t = next_check if next_check < math.inf else t + 1.0
        assert replicas == 0, policy.name


def test_gateway_replicas_follow_reported_inflight_calls():
    assert gateway_replicas([], 200, 4) == 1
    assert gateway_replicas([0.0, 0.0], 200, 4) == 1
    assert gateway_replicas([250.0, 190.0], 200, 4) == 3
    assert gateway_replicas([5000.0], 200, 4) == 4
