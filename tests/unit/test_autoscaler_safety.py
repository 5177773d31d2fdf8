"""The autoscaler survives what it was not built for: a policy that raises, a clock stepped back."""

import logging
from types import SimpleNamespace

from autoscaling.clock import SteadyClock
from autoscaling.serve_adapter import RaygpuServePolicy, logger


def context(target: int, running: int, inflight: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(
        current_num_replicas=running, target_num_replicas=target, total_num_requests=inflight, policy_state={"k": 1}
    )


def test_a_policy_that_raises_keeps_its_function_where_it_is_and_logs_once_a_minute():
    policy = RaygpuServePolicy("shop", "add", "no-such-store", "no-such-namespace", idle_window_s=60.0)
    policy.policy.decide = lambda *args: (_ for _ in ()).throw(ZeroDivisionError("boom"))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        answers = [policy(context(target=3, running=2, inflight=9.0)) for _ in range(5)]
    finally:
        logger.removeHandler(handler)
    assert answers == [(3, {"k": 1})] * 5 and policy.failures == 5
    failures = [r for r in records if "policy of shop/add failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info[0] is ZeroDivisionError


def test_a_working_policy_still_scales_up_from_zero():
    policy = RaygpuServePolicy("shop", "add", "no-such-store", "no-such-namespace", idle_window_s=60.0)
    replicas, _ = policy(context(target=0, running=0, inflight=1.0))
    assert replicas == 1


class FakeClocks:
    def __init__(self):
        self.wall, self.mono = 1_000_000.0, 50.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def test_the_steady_clock_ignores_steps_of_the_system_clock():
    clocks = FakeClocks()
    clock = SteadyClock(wall=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    clocks.advance(10)
    assert clock.now() == 1_000_010.0
    assert clock.arrival(1_000_009.5) == 1_000_009.5
    clocks.wall -= 3600  # the system clock is stepped back an hour
    clocks.advance(2)
    assert clock.now() == 1_000_012.0  # the autoscaler's time keeps going
    # a gateway stamps an arrival with the stepped-back clock: it lands at the right moment
    assert clock.arrival(clocks.wall - 0.5) == 1_000_011.5
    assert clock.arrival(clocks.wall - 100) == 1_000_011.5  # never before the previous arrival
    assert clock.arrival(clocks.wall + 100) == clock.now()  # never in the future


def test_a_policy_handed_over_pickled_by_value_shares_the_process_link():
    """Serve may pickle a policy with copies of its module's globals; its links must still be the
    process's one link per actor (a link per deployment would start threads per deployment)."""
    import pickle

    import cloudpickle

    import autoscaling.links as links
    import autoscaling.serve_adapter as adapter

    policy = RaygpuServePolicy("shop", "add", "store", "ns", meter_actor="meter", meter_namespace="ns")
    cloudpickle.register_pickle_by_value(adapter)
    try:
        blob = cloudpickle.dumps(policy)
    finally:
        cloudpickle.unregister_pickle_by_value(adapter)
    first, second = pickle.loads(blob), pickle.loads(blob)
    assert first.store is second.store is links._links[("store", "ns")]
    assert first.meter is second.meter is links._meter_links[("meter", "ns")]
