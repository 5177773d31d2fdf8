"""The pure scaling policy on hand-made observations."""

from autoscaling.policy import Observation, PolicyState, ScalingLimits, decide

LIMITS = ScalingLimits(min_replicas=0, max_replicas=8, buffer_replicas=0, inputs_per_replica=2, idle_window_s=10)


def test_scales_up_at_once_to_cover_load():
    d = decide(LIMITS, Observation(now=0, current_replicas=1, ongoing_requests=7), PolicyState())
    assert d.replicas == 4


def test_keeps_replicas_through_the_idle_window_then_reaches_zero():
    state = decide(LIMITS, Observation(now=0, current_replicas=1, ongoing_requests=1), PolicyState()).state
    d = decide(LIMITS, Observation(now=5, current_replicas=1, ongoing_requests=0), state)
    assert d.replicas == 1
    d = decide(LIMITS, Observation(now=10.5, current_replicas=1, ongoing_requests=0), d.state)
    assert d.replicas == 0


def test_arrivals_count_as_activity_even_when_requests_are_too_short_to_see():
    d = decide(LIMITS, Observation(now=100, current_replicas=1, ongoing_requests=0, last_arrival=95), PolicyState())
    assert d.replicas == 1
    d = decide(LIMITS, Observation(now=106, current_replicas=1, ongoing_requests=0, last_arrival=95), d.state)
    assert d.replicas == 0


def test_min_max_and_buffer():
    limits = ScalingLimits(min_replicas=1, max_replicas=3, buffer_replicas=1, inputs_per_replica=1, idle_window_s=10)
    assert decide(limits, Observation(now=0, current_replicas=1, ongoing_requests=100), PolicyState()).replicas == 3
    d = decide(limits, Observation(now=0, current_replicas=1, ongoing_requests=1), PolicyState())
    assert d.replicas == 2  # one busy + one buffer
    d = decide(limits, Observation(now=30, current_replicas=2, ongoing_requests=0), d.state)
    assert d.replicas == 1  # never below min_containers


def test_partial_scale_down_waits_for_the_window():
    state = PolicyState(last_busy=0)
    d = decide(LIMITS, Observation(now=1, current_replicas=4, ongoing_requests=2), state)
    assert d.replicas == 4
    d = decide(LIMITS, Observation(now=8, current_replicas=4, ongoing_requests=2), d.state)
    assert d.replicas == 4
    d = decide(LIMITS, Observation(now=11.5, current_replicas=4, ongoing_requests=2), d.state)
    assert d.replicas == 1


def test_gateway_replicas_follow_reported_inflight_calls():
    from autoscaling.policy import gateway_replicas

    assert gateway_replicas([], 200, 4) == 1
    assert gateway_replicas([0.0, 0.0], 200, 4) == 1
    assert gateway_replicas([250.0, 190.0], 200, 4) == 3
    assert gateway_replicas([5000.0], 200, 4) == 4
