"""raygpu's policy live in Ray Serve: predictive warm-up, bounded steps, scale to zero, no losses."""

import threading
import time

import pytest
import requests
from conftest import APPS


@pytest.fixture(scope="module")
def scaling(cluster):
    cluster.deploy(APPS / "scaling.py")
    return cluster


def replicas(cluster, fn):
    f = next(f for f in cluster.status("scaling").functions if f.name == fn)
    return f.replicas.running + f.replicas.starting, f


def scale_events(fn, since):
    import ray

    from deployments.store.actor import get_store

    return ray.get(get_store().scale_events.remote("scaling", fn, since))


@pytest.mark.slow
def test_a_periodic_function_is_prewarmed_and_random_sparse_traffic_stays_at_zero(scaling):
    period = 16.0
    sparse_offsets = [3.0, 25.4, 42.2, 59.8, 86.2]  # irregular gaps (22.4, 16.8, 17.6, 26.4 s): no period
    started = time.monotonic()
    at_zero_between_timer_calls = []
    sparse_zero_checks = []
    prewarmed_before_call = False
    last_latency = None
    for tick in range(7):  # the period is known after five calls; by the seventh the start time is measured too
        due = started + tick * period
        # between calls: sample replica counts while waiting for the next tick
        while time.monotonic() < due - 0.3:
            now = time.monotonic() - started
            if any(abs(now - (o + 12.0)) < 0.3 for o in sparse_offsets):  # past its idle window
                sparse_zero_checks.append((round(now, 1), replicas(scaling, "sparse")[0]))
            if any(abs(now - o) < 0.3 for o in sparse_offsets):
                assert scaling.post("/scaling/sparse", {"tick": tick}).status_code == 200
                time.sleep(0.6)
            # three quarters of a period after an early timer call (a cold start, then its idle window
            # and its linger), before any pre-warm: the period is not known yet
            if tick in (1, 2) and abs(now - (tick - 0.25) * period) < 0.3:
                at_zero_between_timer_calls.append(replicas(scaling, "timer")[0])
                time.sleep(0.6)
            time.sleep(0.1)
        if tick == 6:
            count, info = replicas(scaling, "timer")
            prewarmed_before_call = info.replicas.running >= 1
        t0 = time.monotonic()
        assert scaling.post("/scaling/timer", {"tick": tick}).json() == tick
        last_latency = time.monotonic() - t0
    assert at_zero_between_timer_calls and all(n == 0 for n in at_zero_between_timer_calls), at_zero_between_timer_calls
    assert prewarmed_before_call, "the timer function was not warm before its predicted call"
    assert last_latency < 1.0  # served by the pre-warmed replica, not a cold start
    assert sparse_zero_checks and all(n == 0 for _, n in sparse_zero_checks), sparse_zero_checks


@pytest.mark.slow
def test_b_d_load_step_scales_in_bounded_steps_then_down_without_failures_then_to_zero(scaling):
    since = time.time()
    stop = threading.Event()
    clients = {"count": 8}
    results: list[int] = []

    def client(index: int):
        session = requests.Session()
        while not stop.is_set():
            if index >= clients["count"]:
                time.sleep(0.1)
                continue
            try:
                results.append(
                    session.post(f"{scaling.url}/scaling/work", json={"seconds": 0.5}, timeout=120).status_code
                )
            except requests.RequestException:
                results.append(0)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        try:
            scaling.wait_for(
                lambda: replicas(scaling, "work")[1].replicas.running >= 4,
                timeout=90,
                what="4 running replicas under load",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; scale events: {scale_events('work', since)}; status: {replicas(scaling, 'work')[1]}"
            ) from None
        peak_events = scale_events("work", since)
        clients["count"] = 1  # (d): replicas are removed while calls keep flowing
        scaling.wait_for(lambda: replicas(scaling, "work")[0] <= 1, timeout=90, what="scale-down under load")
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    targets = [e["to"] for e in peak_events if e["to"] > e["from"]]
    assert targets[0] == 1, peak_events  # 0→1 at once...
    assert all(b <= 2 * a for a, b in zip(targets, targets[1:])), targets  # ...then bounded steps, never 1→4
    assert results and all(code == 200 for code in results), sorted(set(results))
    scaling.wait_for(lambda: replicas(scaling, "work")[0] == 0, timeout=60, what="scale to zero after the load")


@pytest.mark.slow
def test_c_fifty_concurrent_clients_at_zero_are_all_answered(scaling):
    scaling.wait_for(lambda: replicas(scaling, "burst")[0] == 0, timeout=60, what="burst at zero")
    results: list[int] = [0] * 50
    barrier = threading.Barrier(50)

    def client(i: int):
        barrier.wait()
        r = requests.post(f"{scaling.url}/scaling/burst", json={"i": i}, timeout=180)
        results[i] = r.status_code if r.json() == i else -1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 50, results


@pytest.mark.slow
def test_learned_state_survives_a_redeploy(scaling):
    import ray

    from deployments.store.actor import get_store

    store = get_store()
    for tick in range(6):
        assert scaling.post("/scaling/sparse", {"tick": tick}).status_code == 200
        time.sleep(1.5)
    scaling.wait_for(
        lambda: (
            (ray.get(store.load_policy_state.remote("scaling", "sparse")) or {}).get("history", {}).get("total", 0) > 0
        ),
        timeout=40,
        what="the learned state to be saved",
    )
    before = ray.get(store.load_policy_state.remote("scaling", "sparse"))["history"]
    scaling.deploy(APPS / "scaling.py")  # a new version: Serve builds new policy instances
    assert scaling.post("/scaling/sparse", {"tick": 99}).status_code == 200
    after = scaling.wait_for(
        lambda: (
            (
                (h := ray.get(store.load_policy_state.remote("scaling", "sparse"))["history"])["last_arrival"]
                > before["last_arrival"]
            )
            and h
        ),
        timeout=40,
        what="the new version's policy to save what it learned from the new call",
    )
    assert after["total"] >= before["total"] > 0  # resumed, not relearned from nothing
