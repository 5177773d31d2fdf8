"""Decisions taken out of their Ray shells: the autoscaler's per-tick decision, the warm pool's
refill plan and what triggered a replica start."""

from autoscaling.decision import PLAN_KEY, SEEN_TARGET_KEY, ServeObservation, decide
from autoscaling.policy import RaygpuPolicy, ScalingConfig
from deployments.node.occupancy import RELEASE_AFTER_S, release_due
from deployments.node.warm_pool import PENDING_GRACE_S, REFILL_DELAY_S, plan_refill
from deployments.replicas.start_phases import StartPhases, trigger_of


def policy() -> RaygpuPolicy:
    return RaygpuPolicy(ScalingConfig(idle_window_s=30.0, start_time_s=5.0))


def test_a_call_at_zero_scales_to_one_and_records_the_event():
    p = policy()
    p.observe_arrival(100.0)
    decision = decide(p, ServeObservation(running=0, target=0, inflight=1.0), now=100.0)
    assert decision.replicas == 1 and decision.scale_events == [(0, 1)]
    assert decision.policy_state[SEEN_TARGET_KEY] == 1 and PLAN_KEY in decision.policy_state


def test_a_target_serve_changed_itself_is_recorded_before_the_decision():
    p = policy()
    p.observe_arrival(100.0)
    # Serve's own 0→1 path moved the target to 1 since the last decision (which returned 0).
    decision = decide(
        p, ServeObservation(running=0, target=1, inflight=1.0, policy_state={SEEN_TARGET_KEY: 0}), now=100.1
    )
    assert decision.replicas == 1 and decision.scale_events == [(0, 1)]


def test_a_steady_decision_records_nothing_and_starting_replicas_count():
    p = policy()
    p.observe_arrival(100.0)
    observation = ServeObservation(running=0, target=1, inflight=1.0, policy_state={SEEN_TARGET_KEY: 1})
    decision = decide(p, observation, now=100.5)
    assert decision.replicas == 1 and decision.scale_events == []


def test_idle_past_the_window_scales_to_zero():
    p = policy()
    p.observe_arrival(100.0)
    decide(p, ServeObservation(running=0, target=0, inflight=1.0), now=100.0)
    decision = decide(
        p, ServeObservation(running=1, target=1, inflight=0.0, policy_state={SEEN_TARGET_KEY: 1}), now=100.0 + 31.0
    )
    assert decision.replicas == 0 and decision.scale_events == [(1, 0)]


def test_a_decision_at_zero_says_when_the_policy_next_wants_to_be_asked():
    p = RaygpuPolicy(ScalingConfig(idle_window_s=30.0, start_time_s=5.0))
    for k in range(12):  # a timer every 10 minutes: pre-warmed just before the next call
        p.observe_arrival(600.0 * k)
    at_zero = ServeObservation(running=0, target=0, inflight=0.0, policy_state={SEEN_TARGET_KEY: 0})
    decision = decide(p, at_zero, now=6600.0 + 60.0)
    assert decision.replicas == 0 and 6600.0 + 500.0 < decision.next_check < 6600.0 + 600.0
    # nothing learned and no plan ahead: never, until something happens
    quiet = RaygpuPolicy(ScalingConfig(idle_window_s=30.0, start_time_s=5.0))
    quiet.observe_arrival(0.0)
    assert decide(quiet, at_zero, now=100.0).next_check == float("inf")


def test_refill_starts_what_is_missing_once_the_pool_settled():
    assert plan_refill(size=2, idle=0, pending=[], taken_at=0.0, now=100.0).start == 2
    assert plan_refill(size=2, idle=1, pending=[], taken_at=0.0, now=100.0).start == 1
    assert plan_refill(size=1, idle=1, pending=[], taken_at=0.0, now=100.0).start == 0


def test_refill_waits_after_a_worker_was_taken_and_counts_prestarts_on_their_way():
    plan = plan_refill(size=2, idle=0, pending=[], taken_at=100.0, now=100.0 + REFILL_DELAY_S / 2)
    assert plan.start == 0
    plan = plan_refill(size=2, idle=0, pending=[99.0], taken_at=0.0, now=100.0)
    assert plan.start == 1 and plan.pending == [99.0]
    stale = 100.0 - PENDING_GRACE_S - 1
    plan = plan_refill(size=2, idle=0, pending=[stale], taken_at=0.0, now=100.0)
    assert plan.start == 2 and plan.pending == []
    assert plan_refill(size=1, idle=1, pending=[99.0], taken_at=0.0, now=100.0).pending == []


def test_start_trigger_pairs_the_scale_up_with_the_call_before_it():
    event = {"time": 100.0, "from": 0, "to": 1}
    assert trigger_of(event, [90.0, 99.5, 100.5], started_at=100.3) == (99.5, 100.0)
    assert trigger_of(event, [], started_at=100.3) == (None, 100.0)  # a pre-warm: no call
    assert trigger_of({"time": 100.0, "from": 2, "to": 1}, [99.5], started_at=100.3) == (None, None)
    assert trigger_of(event, [99.5], started_at=200.0) == (None, None)  # too long before this start
    assert trigger_of(None, [99.5], started_at=100.3) == (None, None)


def test_a_node_launched_for_a_replica_shows_as_provision_and_is_looked_past():
    event = {"time": 100.0, "from": 0, "to": 1}
    # the node took 200 s to launch: the decision is looked for before the node's registration
    assert trigger_of(event, [99.5], started_at=305.0) == (None, None)
    assert trigger_of(event, [99.5], started_at=305.0, node_registered_at=300.0) == (99.5, 100.0)
    # a node that has been up for hours was not launched for this start
    assert trigger_of(event, [99.5], started_at=9000.0, node_registered_at=300.0) == (None, None)
    phases = StartPhases(process_start=305.0, replica_init=307.0, node_registered_at=300.0)
    phases.set_trigger(99.5, 100.0)
    durations = phases.durations()
    assert durations["detection"] == 0.5 and durations["provision"] == 200.0 and durations["scheduling"] == 5.0
    assert list(durations)[:4] == ["detection", "provision", "scheduling", "process"]
    # on a node that was already there, no provision phase
    phases = StartPhases(process_start=101.0, replica_init=102.0, node_registered_at=50.0)
    phases.set_trigger(99.5, 100.0)
    assert "provision" not in phases.durations() and phases.durations()["scheduling"] == 1.0


def test_a_scale_up_recorded_after_the_start_was_decided_when_its_call_arrived():
    # Serve's own path for a call at zero: the policy records 0→1 at its next tick, after the start
    late = {"time": 110.0, "from": 0, "to": 1}
    assert trigger_of(late, [90.0, 100.0, 109.0], started_at=105.0) == (100.0, 100.0)
    assert trigger_of({"time": 110.0, "from": 1, "to": 2}, [100.0], started_at=105.0) == (None, None)
    assert trigger_of(late, [], started_at=105.0) == (None, None)


def test_a_pool_on_an_autoscaled_node_leaves_once_its_node_runs_no_replica():
    assert not release_due(True, last_busy=0.0, now=1000.0)
    assert not release_due(False, last_busy=1000.0 - RELEASE_AFTER_S / 2, now=1000.0)
    assert release_due(False, last_busy=1000.0 - RELEASE_AFTER_S, now=1000.0)
