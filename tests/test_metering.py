"""Metering live: every call lands in the ledger, and the bill matches what Ray actually ran."""

import json
import time
from decimal import Decimal

import pytest

from conftest import APPS


def meter():
    import ray

    from billing.meter import METER_ACTOR_NAME

    return ray.get_actor(METER_ACTOR_NAME, namespace="raygpu")


@pytest.mark.slow
def test_ledger_counts_every_call_and_bills_agree_with_ray_state(cluster):
    import ray

    cluster.deploy(APPS / "metered.py")
    sent = 0
    for _ in range(6):
        assert cluster.post("/metered/infer", {"seconds": 0.3}).status_code == 200
        sent += 1
    assert cluster.post("/metered/infer", {"seconds": "x"}).status_code == 422
    sent += 1
    cluster.wait_for(lambda: cluster.status("metered").functions[0].replicas.running == 0, timeout=90,
                     what="scale to zero")

    def counted():
        counts = ray.get(meter().request_counts.remote("metered")).get("metered/infer", {})
        return counts if sum(counts.values()) == sent else None

    counts = cluster.wait_for(counted, timeout=30, what="every request in the ledger")
    assert counts == {200: 6, 422: 1}

    def dead_replicas():
        # Ray's own record of each replica actor (GCS actor table): pid, start and end times in ms
        found = [a for a in ray._private.state.actors().values()
                 if a["ActorClassName"] == "ServeReplica:raygpu-app-metered:infer"]
        return found if found and all(a["State"] == "DEAD" and a["EndTime"] for a in found) else None

    actors = {a["Pid"]: a for a in cluster.wait_for(dead_replicas, timeout=120, what="replica actors to end")}
    time.sleep(2.0)  # the stop events' last flush
    intervals = ray.get(meter().intervals.remote("metered", "infer"))
    by_replica: dict[str, list] = {}
    for iv in intervals:
        by_replica.setdefault(iv["replica"], []).append(iv)
    assert by_replica and set(int(r.split("-")[0]) for r in by_replica) == set(actors)
    for replica, ivs in by_replica.items():
        pid = int(replica.split("-")[0])
        actor = actors[pid]
        phases = {p: sum(iv["end"] - iv["start"] for iv in ivs if iv["phase"] == p) for p in ("cold_start", "active", "idle")}
        assert phases["active"] >= 6 * 0.3 * 0.9 / len(by_replica) or len(by_replica) > 1
        # Ray's actor lifetime runs from the actor being created to its death: the replica's
        # ready + active + idle time; the cold start before it is the replica's own process start → ready
        billed = phases["active"] + phases["idle"]
        lifetime = (actor["EndTime"] - actor["StartTime"]) / 1000
        assert abs(billed - lifetime) <= 0.01 * lifetime, (billed, lifetime, phases)
        cold = next(iv for iv in ivs if iv["phase"] == "cold_start")
        assert cold["end"] > cold["start"]  # the replica's own start: process start → ready

    out = cluster.cli("bill", "metered", "--json")
    assert out.returncode == 0, out.stderr
    bill = json.loads(out.stdout)
    (line,) = bill["lines"]
    assert line["function"] == "infer" and line["replica_starts"] == len(by_replica)
    seconds = {p: Decimal(v) for p, v in line["gpu_seconds"].items()}
    assert seconds["active"] > 0 and seconds["idle"] > 0 and seconds["cold_start"] > 0
    expected = sum(((s * Decimal("3.95") / 3600).quantize(Decimal("0.000001")) for s in seconds.values()), Decimal(0))
    assert abs(Decimal(line["total_cost_usd"]) - expected) <= Decimal("0.000003")
    csv_out = cluster.cli("bill", "metered", "--csv")
    assert csv_out.stdout.splitlines()[0].startswith("app,function,day,cold_start_gpu_s")
