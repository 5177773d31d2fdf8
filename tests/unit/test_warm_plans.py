"""The cost-optimal warm plans, the release delay learned from replica levels, the measured service
time and arrival rate, and the policy planning with measured starts (pure: no Ray)."""

import random

import pytest

from autoscaling.history import ArrivalHistory, bin_edges, gap_bin
from autoscaling.levels import ReplicaLevels
from autoscaling.load import ArrivalRate, ServiceTime
from autoscaling.policy import RaygpuPolicy, ScalingConfig
from autoscaling.start_times import planned_start_s
from autoscaling.warm_plan import cheapest_plan

EDGES = bin_edges()


def histogram(gaps: list[float]) -> ArrivalHistory:
    h = ArrivalHistory(burst_gap_s=0.0)
    for g in gaps:
        h.observe_gap(g)
    return h


def plan_for(gaps: list[float], cold_start_cost: float, lead_s: float = 10.0, max_keep_s: float = 4 * 3600.0):
    counts, sums, beyond = histogram(gaps).decayed()
    return cheapest_plan(
        EDGES, counts, sums, beyond, cold_start_cost=cold_start_cost, lead_s=lead_s, max_keep_s=max_keep_s
    )


def brute_force_keep_cost(gaps: list[float], keep_s: float, cold_start_cost: float) -> float:
    return sum(min(g, keep_s) + (cold_start_cost if g > keep_s else 0.0) for g in gaps) / len(gaps)


def test_short_gaps_are_bridged_and_long_ones_are_not_waited_for():
    # every gap 5 s: keeping costs 5 s a gap, a cold start costs 100: keep just past 5 s
    short = plan_for([5.0] * 50, cold_start_cost=100.0)
    assert not short.prewarms and 5.0 <= short.keep_s <= 5.0 * 1.11, short
    # every gap 2 h, a start's lead of 10 s: stop at once, start again just before the call (the
    # window opens at the lower edge of the gaps' 10% bin, so idling up to 10% of the gap is priced)
    long = plan_for([7200.0] * 50, cold_start_cost=1000.0)
    assert long.prewarms and long.keep_s == 0.0
    assert not plan_for([7200.0] * 50, cold_start_cost=100.0).prewarms  # a cold start is cheaper
    assert 7200.0 / 1.11 <= long.prewarm_from_s <= 7200.0 <= long.prewarm_until_s <= 7200.0 * 1.11
    assert long.cost < 0.1 * 7200.0  # far below idling through the gap


def test_the_keep_alive_chosen_is_the_cheapest_one_over_the_observed_gaps():
    rng = random.Random(7)
    gaps = [rng.expovariate(1 / 90.0) + 1.0 for _ in range(400)]
    for price in (20.0, 120.0, 600.0):
        plan = plan_for(gaps, cold_start_cost=price, max_keep_s=3600.0)
        if plan.prewarms:
            continue  # a pre-warm plan was cheaper still than any keep-alive
        best = min(brute_force_keep_cost(gaps, k, price) for k in EDGES if k <= 3600.0)
        # bins stand for their gaps' mean, so the model's cost is close to the exact one
        assert brute_force_keep_cost(gaps, plan.keep_s, price) <= best * 1.05 + 1e-9


def test_a_dearer_cold_start_keeps_replicas_longer():
    rng = random.Random(3)
    gaps = [rng.expovariate(1 / 300.0) + 1.0 for _ in range(300)]
    keeps = [plan_for(gaps, cold_start_cost=c, max_keep_s=1800.0).keep_s for c in (10.0, 200.0, 5000.0)]
    assert keeps == sorted(keeps) and keeps[0] < keeps[-1]


def test_bimodal_gaps_keep_through_the_burst_and_prewarm_for_the_next_one():
    # a cron burst: calls 2 s apart, then 15 minutes of silence
    gaps = ([2.0] * 20 + [900.0]) * 10
    plan = plan_for(gaps, cold_start_cost=240.0, lead_s=34.0)
    assert plan.prewarms
    assert 2.0 <= plan.keep_s < 10.0  # bridges the in-burst gaps only
    assert plan.prewarm_from_s <= 900.0 <= plan.prewarm_until_s


def test_no_plan_reaches_past_the_longest_keep_alive():
    plan = plan_for([20000.0] * 30 + [100.0] * 30, cold_start_cost=1e6, max_keep_s=600.0)
    assert plan.keep_s <= 600.0 and (not plan.prewarms or plan.prewarm_until_s <= 600.0)


def test_an_empty_histogram_keeps_nothing():
    plan = cheapest_plan(
        EDGES, [0.0] * (len(EDGES) - 1), [0.0] * (len(EDGES) - 1), 0.0, cold_start_cost=1.0, lead_s=1.0, max_keep_s=10.0
    )
    assert plan.keep_s == 0.0 and not plan.prewarms


def test_gap_bins_are_ten_percent_wide_and_round_trip():
    assert gap_bin(0.5) == 0 and EDGES[gap_bin(100.0)] <= 100.0 < EDGES[gap_bin(100.0) + 1]
    assert EDGES[gap_bin(100.0) + 1] / EDGES[gap_bin(100.0)] == pytest.approx(10 ** (1 / 24))
    h = histogram([3.0, 30.0, 300.0, 30000.0])
    again = ArrivalHistory.from_dict(h.to_dict())
    assert again.decayed() == h.decayed() and again.gaps_seen == 4
    assert ArrivalHistory.from_dict({"counts": [1.0] * 5}).gaps_seen == 0  # an older layout: relearned


def test_period_is_found_over_session_starts_of_a_cron_burst():
    h = ArrivalHistory(burst_gap_s=1.0, session_gap_s=30.0)
    rng = random.Random(1)
    for k in range(6):
        start = 600.0 * k
        for t in sorted(start + rng.uniform(0, 40.0) for _ in range(15)):
            h.observe(t)
        h.observe(start)  # out of order inside the burst: ignored
    assert h.period() == pytest.approx(600.0, rel=0.1)
    assert h.period_spread() < 60.0


def test_released_capacity_wanted_back_soon_teaches_a_longer_release_delay():
    levels = ReplicaLevels(default_delay_s=30.0, cold_start_cost=240.0, max_delay_s=1800.0, min_gaps=10)
    t = 0.0
    for _ in range(30):  # 4 replicas wanted, then 1 for 90 s, again and again
        levels.observe_wanted(t, 4)
        levels.observe_wanted(t + 20.0, 1)
        t += 110.0
    assert levels.release_delay_s() >= 90.0
    once = ReplicaLevels(default_delay_s=30.0, cold_start_cost=240.0, max_delay_s=600.0, min_gaps=10)
    t = 0.0
    for _ in range(30):  # 4 wanted briefly, then not again for an hour
        once.observe_wanted(t, 4)
        once.observe_wanted(t + 20.0, 1)
        once.observe_wanted(t + 700.0, 1)  # past the longest delay: counted as a gap beyond it
        t += 3600.0
    assert once.release_delay_s() < 30.0
    assert ReplicaLevels(30.0, 240.0, 600.0, 10).release_delay_s() == 30.0  # nothing learned yet


def test_service_time_is_measured_from_completions():
    service = ServiceTime()
    t = 0.0
    inflight = 0
    for _ in range(20):  # one call at a time, each 0.5 s
        service.observe_arrival()
        inflight += 1
        service.observe(t, inflight, slots=1)
        t += 0.5
        inflight -= 1
        service.observe(t, inflight, slots=1)
        t += 1.0
        service.observe(t, inflight, slots=1)
    assert service.seconds() == pytest.approx(0.5, rel=0.05)
    assert ServiceTime().seconds() is None


def test_arrival_rate_follows_the_last_start_time():
    rate = ArrivalRate(tau_s=10.0)
    for k in range(200):
        rate.observe_arrival(k * 0.5)  # 2 per second
    assert rate.at_time(100.0) == pytest.approx(2.0, rel=0.1)
    assert rate.at_time(160.0) < 0.01


def warmed_up_policy(start_time_s: float, service_s: float, **config) -> tuple[RaygpuPolicy, float]:
    """A policy that has measured a service time on one replica, one call at a time."""
    p = RaygpuPolicy(ScalingConfig(start_time_s=start_time_s, **config))
    t = 0.0
    for _ in range(20):
        p.observe_arrival(t)
        p.decide(t, 1, 0, 1)
        t += service_s
        p.decide(t, 1, 0, 0)
        t += 1.0
    return p, t


def test_a_backlog_of_short_calls_is_sized_by_its_work_not_its_count():
    p, t = warmed_up_policy(30.0, 1.0, max_replicas=1000, upscale_interval_s=0.0)
    for _ in range(500):  # 500 one-second calls at once, then nothing
        p.observe_arrival(t)
    queued, replicas, peak = 500.0, 1, 1
    while queued > 0:
        replicas = p.decide(t, replicas, 0, queued)[0]  # replicas ready at once: an upper bound
        peak = max(peak, replicas)
        queued = max(0.0, queued - replicas)  # each replica answers one call a second
        t += 1.0
    assert 5 <= peak <= 40  # about two dozen replicas, not 500


def test_a_queue_that_does_not_drain_grows_the_replicas():
    p, t = warmed_up_policy(5.0, 0.5, max_replicas=16, upscale_interval_s=0.0)
    replicas = 1
    for _ in range(200):  # 8 callers, each calling again when answered; 0.5 s a call
        for _ in range(replicas):
            p.observe_arrival(t)
        t += 0.5
        replicas = min(8, p.decide(t, replicas, 0, 8)[0])
    assert replicas == 8


def test_one_caller_waiting_on_each_answer_keeps_one_replica():
    p, t = warmed_up_policy(5.0, 0.5, max_replicas=8, upscale_interval_s=0.0)
    wanted = set()
    for _ in range(200):  # one call in flight at any time, back to back
        p.observe_arrival(t)
        wanted.add(p.decide(t, 1, 0, 1)[0])
        t += 0.5
    assert wanted == {1}


def test_measured_starts_replace_the_guess():
    p = RaygpuPolicy(ScalingConfig(start_time_s=5.0))
    for k in range(12):
        p.observe_arrival(7200.0 * k)
    before = p.plan.prewarm_from
    for seconds in (60.0, 61.0, 59.0):
        p.observe_start(seconds)
    assert p.config.start_time_s == 60.0 and p.history.session_gap_s == 60.0
    assert p.plan.prewarm_from < before  # pre-warms a longer start earlier
    p.observe_start(-1.0)
    p.observe_start(float("nan"))
    assert p.measured_starts == [60.0, 61.0, 59.0]
    again = RaygpuPolicy.from_dict(ScalingConfig(start_time_s=5.0), p.to_dict())
    assert again.config.start_time_s == 60.0


def test_planned_start_covers_decision_to_ready_and_refuses_bad_records():
    phases = {"detection": 0.3, "provision": 40.0, "scheduling": 1.0, "process": 2.0, "ready": 0.5, "first_response": 9}
    assert planned_start_s(phases) == pytest.approx(43.5)
    assert planned_start_s({"process": 2.0}) is None  # never became ready
    assert planned_start_s({"ready": "soon"}) is None
    assert planned_start_s({"ready": -1.0}) is None
    assert planned_start_s(None) is None
