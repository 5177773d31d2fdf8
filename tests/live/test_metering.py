"""Metering live: every call lands in the ledger, and the bill matches what Ray actually ran."""

import json
import time
from decimal import Decimal

import pytest
import requests
from conftest import APPS

from raygpu.ops.deploy import live_serve_app


def meter():
    import ray

    from billing.constants import METER_ACTOR_NAME

    return ray.get_actor(METER_ACTOR_NAME, namespace="raygpu")


def audit_against_ray(cluster, app: str, function: str, killed_pids: frozenset[int] = frozenset()) -> dict[str, list]:
    """Wait until every replica actor of app/function has ended; check each replica's billed
    ready + active + idle seconds against its actor lifetime in Ray's GCS actor table (within 1%),
    and its cold start against Ray's record of the worker process. Return intervals by replica."""
    import ray
    from ray.util.state import list_workers

    def dead_replicas():
        found = [
            a
            for a in ray._private.state.actors().values()
            if a["ActorClassName"].startswith(f"ServeReplica:raygpu-app-{app}--v")
            and a["ActorClassName"].endswith(f":{function}")
        ]
        return found if found and all(a["State"] == "DEAD" and a["EndTime"] for a in found) else None

    actors = {a["Pid"]: a for a in cluster.wait_for(dead_replicas, timeout=120, what="replica actors to end")}

    def billed_seconds(ivs: list) -> float:
        return sum(iv["end"] - iv["start"] for iv in ivs if iv["phase"] in ("active", "idle"))

    def lifetime_s(pid: int) -> float:
        return (actors[pid]["EndTime"] - actors[pid]["StartTime"]) / 1000

    def tolerance_s(pid: int) -> float:
        # within 1%; a replica the autoscaler kept only a second or two is held to 0.15 s instead
        # (Ray's own timestamps and the stop event's are ~0.1 s apart, which 1% of that cannot hold)
        return max(0.01 * lifetime_s(pid), 0.15)

    def stops_recorded() -> dict[str, list] | None:
        """Intervals by replica once the ledger has every replica and, for each one that stopped
        (a killed replica sends no stop: it is billed to its last heartbeat), its stop: until then its
        last phase ends at a heartbeat, up to one heartbeat short of its lifetime."""
        found: dict[str, list] = {}
        for iv in ray.get(meter().intervals.remote(app, function)):
            found.setdefault(iv["replica"], []).append(iv)
        by_pid = {int(r.split("-")[0]): ivs for r, ivs in found.items()}
        if set(by_pid) != set(actors):
            return None
        stopped = all(
            abs(billed_seconds(by_pid[pid]) - lifetime_s(pid)) <= tolerance_s(pid)
            for pid in actors
            if pid not in killed_pids
        )
        return found if stopped else None

    by_replica = cluster.wait_for(stops_recorded, timeout=30, what="every replica's stop in the ledger")
    workers = {
        w.pid: w
        for w in list_workers(
            address=ray.get_runtime_context().gcs_address,
            filters=[("worker_type", "=", "WORKER")],
            detail=True,
            limit=10000,
        )
    }
    warm_pids = {
        int(r.split("-")[0])
        for r, phases in ray.get(meter().replica_start_phases.remote(app, function)).items()
        if phases.get("process") == 0.0
    }
    for replica, ivs in by_replica.items():
        pid = int(replica.split("-")[0])
        if pid in killed_pids:
            continue
        phases = {
            p: sum(iv["end"] - iv["start"] for iv in ivs if iv["phase"] == p) for p in ("cold_start", "active", "idle")
        }
        # Ray's actor lifetime runs from the actor being created to its death: the replica's
        # ready + active + idle time
        billed = phases["active"] + phases["idle"]
        lifetime = lifetime_s(pid)
        assert abs(billed - lifetime) <= tolerance_s(pid), (billed, lifetime, phases)
        # the cold start runs from the replica worker's launch (Ray's own timestamp) to ready; a
        # replica that took an idle warm worker from the pool starts at its own construction
        cold = next(iv for iv in ivs if iv["phase"] == "cold_start")
        launched = workers[pid].worker_launch_time_ms / 1000
        assert cold["start"] >= launched - 0.25, (cold, launched, workers[pid])
        if cold["start"] - launched > 0.25:
            assert pid in warm_pids, (cold, launched, "started late in a worker that was not a warm one")
        assert cold["end"] <= actors[pid]["StartTime"] / 1000 + 0.25
    return by_replica


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
    cluster.wait_for(
        lambda: cluster.status("metered").functions[0].replicas.running == 0, timeout=90, what="scale to zero"
    )

    def counted():
        counts = ray.get(meter().request_counts.remote("metered")).get("metered/infer", {})
        return counts if sum(counts.values()) == sent else None

    counts = cluster.wait_for(counted, timeout=30, what="every request in the ledger")
    assert counts == {200: 6, 422: 1}

    by_replica = audit_against_ray(cluster, "metered", "infer")
    # six calls of 0.3 s each, on whichever replicas ran them: at least that much active time in all
    active = sum(iv["end"] - iv["start"] for ivs in by_replica.values() for iv in ivs if iv["phase"] == "active")
    assert active >= 6 * 0.3 * 0.95, by_replica

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


# A scripted usage history with known durations, recorded through the real meter: every duration
# is a multiple of 36 s, so at $3.95 (H100) and $1.10 (A10G) per GPU-hour each amount is exact.
SCRIPT_T0 = 1767607200.0  # 2026-01-05T10:00:00Z


def scripted_events() -> list[dict]:
    def ev(replica, kind, offset, gpus=1.0, accelerator="H100", function="chat"):
        return {
            "id": f"script-{replica}-{kind}-{offset}",
            "app": "ledgerbook",
            "function": function,
            "replica": replica,
            "kind": kind,
            "ts": SCRIPT_T0 + offset,
            "gpus": gpus,
            "accelerator": accelerator,
        }

    return [
        # chat replica A: cold 36, active 72 + 72, idle 144 + 288, stopped
        ev("A", "started", 0),
        ev("A", "ready", 36),
        ev("A", "serving", 36),
        ev("A", "idle", 108),
        ev("A", "serving", 252),
        ev("A", "idle", 324),
        ev("A", "stopped", 612),
        # chat replica B: cold 36, active 36, idle 108, then silence (no stop: closed at its last heartbeat)
        ev("B", "heartbeat", 360),
        ev("B", "started", 180),
        ev("B", "ready", 216),
        ev("B", "serving", 216),
        ev("B", "idle", 252),
        # embed: 2 x A10G, cold 72 s, idle 72 s
        ev("E", "started", 0, 2.0, "A10G", "embed"),
        ev("E", "ready", 72, 2.0, "A10G", "embed"),
        ev("E", "stopped", 144, 2.0, "A10G", "embed"),
    ]


def scripted_requests() -> list[dict]:
    return [
        {
            "id": f"script-req-{i}",
            "app": "ledgerbook",
            "function": "chat",
            "replica": "A",
            "status": 200 if i < 25 else 422,
            "latency_s": 0.5,
            "bytes_in": 10,
            "bytes_out": 20,
            "ts": SCRIPT_T0 + 40 + i,
        }
        for i in range(30)
    ]


@pytest.fixture(scope="module")
def scripted_usage(cluster):
    import ray

    from raygpu.sdk.control import admin_call

    # the meter bills only units the store knows: record a (never started) version naming this one
    version = admin_call(
        "begin_version", "ledgerbook", "scripted", [{"spec": {"name": "chat"}}, {"spec": {"name": "embed"}}]
    )
    admin_call("mark_failed", "ledgerbook", version)
    events, requests_ = scripted_events(), scripted_requests()
    ray.get(meter().record.remote({"events": events[::-1], "requests": requests_}))
    # a resend of part of it (what a replica does after a lost reply) changes nothing
    assert ray.get(meter().record.remote({"events": events[:5], "requests": requests_[:7]})) == 0
    return events


def test_scripted_bill_and_cost_match_hand_computation(cluster, scripted_usage):
    out = cluster.cli("bill", "ledgerbook", "--json")
    assert out.returncode == 0, out.stderr
    bill = json.loads(out.stdout)
    lines = {line["function"]: line for line in bill["lines"]}
    # chat: cold 36 + 36 = 72 GPU-s, active 72 + 72 + 36 = 180, idle 144 + 288 + 108 = 540, at $3.95/h
    assert {p: Decimal(v) for p, v in lines["chat"]["gpu_seconds"].items()} == {
        "cold_start": 72,
        "active": 180,
        "idle": 540,
    }
    assert {p: Decimal(v) for p, v in lines["chat"]["cost_usd"].items()} == {
        "cold_start": Decimal("0.079"),
        "active": Decimal("0.1975"),
        "idle": Decimal("0.5925"),
    }
    assert Decimal(lines["chat"]["total_cost_usd"]) == Decimal("0.869") and lines["chat"]["replica_starts"] == 2
    # embed: 2 GPUs x (72 s cold + 72 s idle) at $1.10/h
    assert {p: Decimal(v) for p, v in lines["embed"]["gpu_seconds"].items()} == {
        "cold_start": 144,
        "active": 0,
        "idle": 144,
    }
    assert Decimal(lines["embed"]["total_cost_usd"]) == Decimal("0.088")
    assert Decimal(bill["total_gpu_seconds"]) == 1080 and Decimal(bill["total_cost_usd"]) == Decimal("0.957")

    out = cluster.cli("bill", "ledgerbook", "--by", "day", "--since", "2026-01-05T10:03:00", "--json")
    (chat_day,) = [line for line in json.loads(out.stdout)["lines"] if line["function"] == "chat"]
    assert chat_day["day"] == "2026-01-05"
    # from 10:03 (offset 180): A idle 180-252 (72) + active 252-324 (72) + idle 324-612 (288); B all of it
    assert {p: Decimal(v) for p, v in chat_day["gpu_seconds"].items()} == {"cold_start": 36, "active": 108, "idle": 468}

    out = cluster.cli("cost", "ledgerbook/chat", "--json")
    assert out.returncode == 0, out.stderr
    cost = json.loads(out.stdout)
    # 612 s of traffic -> one rented hour; peak 2 replicas of 1 GPU; 30 requests
    options = {o["option"]: (Decimal(o["low_usd"]), Decimal(o["high_usd"])) for o in cost["options"]}
    assert options == {
        "serverless": (Decimal("0.869"), Decimal("0.869")),
        "dedicated": (Decimal(4), Decimal(16)),
        "per_request": (Decimal("0.30"), Decimal("3.00")),
    }
    assert (cost["requests"], cost["peak_replicas"], Decimal(cost["peak_gpus"]), cost["rented_gpu_hours"]) == (
        30,
        2,
        2,
        2,
    )
    assert Decimal(cost["period_s"]) == 612 and Decimal(cost["utilisation"]) == Decimal("0.025")  # 180 / 7200
    assert cost["cheapest"] == "serverless" and cost["cheapest_at_any_price"] is False
    # break-even utilisation: 180 GPU-s * $2 (or $8) / 3600 / $0.869
    assert (Decimal(cost["break_even_utilisation"]["low"]), Decimal(cost["break_even_utilisation"]["high"])) == (
        Decimal("0.1151"),
        Decimal("0.4603"),
    )
    assert Decimal(cost["serverless_usd_per_request"]) == Decimal("0.028967")  # 0.869 / 30

    out = cluster.cli("cost", "ledgerbook/chat", "--dedicated", "1.00", "--per-request", "0.001-0.002", "--json")
    cost = json.loads(out.stdout)
    assert cost["cheapest"] == "per_request" and cost["cheapest_at_any_price"] is True
    table = cluster.cli("cost", "ledgerbook/chat")
    assert table.returncode == 0 and "cheapest" in table.stdout and "break" not in table.stderr


def test_bill_and_cost_refuse_bad_input_clearly(cluster):
    out = cluster.cli("cost", "no-such-app")
    assert out.returncode == 1 and "no recorded usage for no-such-app" in out.stderr
    out = cluster.cli("cost", "ledgerbook", "--dedicated", "8-2")
    assert out.returncode == 1 and "above the high end" in out.stderr
    out = cluster.cli("cost", "ledgerbook", "--per-request", "lots")
    assert out.returncode == 1 and "LOW-HIGH" in out.stderr
    out = cluster.cli("bill", "--since", "yesterday")
    assert out.returncode == 1 and "ISO 8601" in out.stderr


def _send_concurrently(cluster, path: str, body: dict, total: int, clients: int, during=None) -> list[int]:
    import threading

    statuses: list[int] = []
    lock = threading.Lock()
    per_client = total // clients

    def client():
        session = requests.Session()
        for _ in range(per_client):
            code = session.post(f"{cluster.url}{path}", json=body, timeout=120).status_code
            with lock:
                statuses.append(code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    if during is not None:
        during(statuses)
    for t in threads:
        t.join()
    return statuses


@pytest.mark.slow
def test_killing_the_meter_during_traffic_loses_nothing(cluster):
    import ray

    cluster.deploy(APPS / "meterkill.py")
    assert cluster.post("/meterkill/work", {"seconds": 0.01}).status_code == 200
    restarted = {}

    def kill_meter_midway(statuses):
        cluster.wait_for(lambda: len(statuses) >= 30, timeout=60, what="traffic to flow")
        restarted["old_pid"] = ray._private.state.actors(meter()._actor_id.hex())["Pid"]
        ray.kill(meter(), no_restart=False)

    statuses = _send_concurrently(
        cluster, "/meterkill/work", {"seconds": 0.05}, total=120, clients=4, during=kill_meter_midway
    )
    assert statuses == [200] * 120
    cluster.wait_for(lambda: ray.get(meter().ping.remote(), timeout=10), timeout=60, what="the meter to restart")
    new_pid = ray._private.state.actors(meter()._actor_id.hex())["Pid"]
    assert new_pid != restarted["old_pid"]

    def counted():
        counts = ray.get(meter().request_counts.remote("meterkill")).get("meterkill/work", {})
        return counts if sum(counts.values()) >= 121 else None

    assert cluster.wait_for(counted, timeout=60, what="every request in the ledger") == {200: 121}
    cluster.wait_for(
        lambda: cluster.status("meterkill").functions[0].replicas.running == 0, timeout=90, what="scale to zero"
    )
    audit_against_ray(cluster, "meterkill", "work")


@pytest.mark.slow
def test_a_killed_replica_is_closed_within_one_heartbeat(cluster):
    import ray

    from billing.client import HEARTBEAT_S

    cluster.deploy(APPS / "meterkill.py")
    assert cluster.post("/meterkill/work", {"seconds": 0.01}).status_code == 200
    (replica,) = [
        a
        for a in ray._private.state.actors().values()
        if a["ActorClassName"] == f"ServeReplica:{live_serve_app('meterkill')}:work" and a["State"] == "ALIVE"
    ]
    time.sleep(HEARTBEAT_S * 2.5)  # a few heartbeats in
    handle = ray.get_actor(replica["Name"], namespace="serve")
    killed_at = time.time()
    ray.kill(handle, no_restart=True)
    time.sleep(HEARTBEAT_S + 2.0)
    ivs = [
        iv
        for iv in ray.get(meter().intervals.remote("meterkill", "work"))
        if iv["replica"].startswith(f"{replica['Pid']}-")
    ]
    assert ivs, "the killed replica has no intervals"
    end = max(iv["end"] for iv in ivs)
    assert killed_at - HEARTBEAT_S - 0.25 <= end <= killed_at + 0.05, (killed_at, end)


@pytest.mark.slow
def test_prometheus_scrapes_the_exporter(cluster, scripted_usage, tmp_path):
    import shutil
    import subprocess

    from raygpu.controlplane.local_cluster import free_port
    from raygpu.sdk.home import read_local_cluster

    binary = shutil.which("prometheus")
    assert binary, "the Prometheus server is missing: `make prometheus` (apt-get install prometheus) installs it"
    info = read_local_cluster()
    exporter = f"127.0.0.1:{info.metrics_port}"
    assert "raygpu_gpu_seconds_total" in requests.get(f"http://{exporter}/metrics", timeout=10).text
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: raygpu\n    static_configs:\n      - targets: ['{exporter}']\n"
    )
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        cluster.deploy(APPS / "metered.py")
        for _ in range(3):
            assert cluster.post("/metered/infer", {"seconds": 0.05}).status_code == 200

        def query(expr: str) -> dict[tuple, float]:
            try:
                body = requests.get(api, params={"query": expr}, timeout=5).json()
            except (requests.RequestException, ValueError):
                return {}
            return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in body["data"]["result"]}

        gpu_seconds = cluster.wait_for(
            lambda: query('sum by (function, phase) (raygpu_gpu_seconds_total{app="ledgerbook"})'),
            timeout=60,
            what="Prometheus to scrape the exporter",
        )
        assert {(dict(k)["function"], dict(k)["phase"]): v for k, v in gpu_seconds.items()} == {
            ("chat", "cold_start"): 72,
            ("chat", "active"): 180,
            ("chat", "idle"): 540,
            ("embed", "cold_start"): 144,
            ("embed", "active"): 0,
            ("embed", "idle"): 144,
        }
        assert query('raygpu_requests_total{app="ledgerbook",status="422"}') and list(
            query('raygpu_requests_total{app="ledgerbook",status="422"}').values()
        ) == [5]
        assert list(query('raygpu_request_duration_seconds_count{app="ledgerbook"}').values()) == [30]
        assert list(query('raygpu_request_duration_seconds_sum{app="ledgerbook"}').values()) == [15]
        assert list(query('raygpu_cold_starts_total{app="ledgerbook",function="chat"}').values()) == [2]
        assert list(query('raygpu_cold_start_duration_seconds_sum{app="ledgerbook",function="chat"}').values()) == [72]

        def live_metered():
            total = query('sum(raygpu_requests_total{app="metered"})')
            running = query('sum(raygpu_replicas{app="metered",state=~"idle|active"})')
            ok = total and list(total.values())[0] >= 3 and running and list(running.values())[0] >= 1
            return ok and (total, running)

        cluster.wait_for(live_metered, timeout=60, what="the live replica and its calls in Prometheus")
        import ray

        ledger = sum(sum(c.values()) for c in ray.get(meter().request_counts.remote("metered")).values())
        scraped = cluster.wait_for(
            lambda: (v := query('sum(raygpu_requests_total{app="metered"})')) and list(v.values())[0] == ledger and v,
            timeout=30,
            what="Prometheus to agree with the ledger",
        )
        assert list(scraped.values()) == [ledger]

        # every query of the shipped Grafana dashboard is valid PromQL over these series, with data
        from conftest import ROOT

        dashboard = json.loads((ROOT / "docs" / "grafana" / "raygpu-dashboard.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = (
                    target["expr"]
                    .replace("$app", "metered|ledgerbook")
                    .replace("$function", ".*")
                    .replace("$__range", "1h")
                    .replace("$__rate_interval", "1m")
                )
                body = requests.get(api, params={"query": expr}, timeout=5).json()
                assert body["status"] == "success", (panel["title"], expr, body)
                if "histogram_quantile" not in expr:  # rates need a few scrapes
                    cluster.wait_for(
                        lambda: requests.get(api, params={"query": expr}, timeout=5).json()["data"]["result"],
                        timeout=30,
                        what=f"data for the dashboard panel {panel['title']!r}: {expr}",
                    )
    finally:
        server.terminate()
        server.wait(timeout=30)
