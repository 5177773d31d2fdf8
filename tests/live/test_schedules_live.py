"""Schedules on the real cluster: a Period function runs on its own, each run on a replica started
ahead of it (at zero in between, by the ledger); a run outlasting its period makes the next skip;
`raygpu run` triggers one; a restarted store and scheduler neither repeat nor lose a due run; a Cron
function's next run is croniter's; an invalid schedule is refused before anything is deployed."""

import json
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import ray
import requests
from conftest import APPS
from croniter import croniter

from billing.constants import METER_ACTOR_NAME
from deployments import constants
from deployments.calls.scheduler import SCHEDULER_ACTOR_NAME

PERIOD_S = 20.0


def runs(cluster, target: str) -> list[dict]:
    out = cluster.cli("runs", target, "--limit", "100", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def scheduled(cluster):
    cluster.deploy(APPS / "scheduled.py")
    status = json.loads(cluster.cli("status", "scheduled", "--json").stdout)
    yield status
    cluster.cli("stop", "scheduled")


def test_an_invalid_schedule_is_refused_before_anything_is_deployed(cluster, tmp_path):
    bad = tmp_path / "badcron.py"
    bad.write_text(
        "import raygpu\napp = raygpu.App('badcron')\n\n"
        "@app.function(schedule=raygpu.Cron('0 25 * * *'))\ndef job():\n    return 1\n"
    )
    out = cluster.cli("deploy", str(bad))
    assert out.returncode != 0 and "invalid cron expression '0 25 * * *'" in out.stdout + out.stderr
    assert all(a["name"] != "badcron" for a in json.loads(cluster.cli("ls", "--json").stdout)["apps"])


def test_a_cron_functions_next_run_is_croniters_and_raygpu_run_triggers_one(cluster, scheduled):
    nightly = next(f for f in scheduled["functions"] if f["name"] == "nightly")
    berlin = ZoneInfo("Europe/Berlin")
    expected = croniter("0 3 * * *", datetime.now(berlin)).get_next(datetime).timestamp()
    assert nightly["schedule"]["schedule"] == "cron '0 3 * * *' (Europe/Berlin)"
    assert nightly["schedule"]["next_run"] == expected
    assert nightly["schedule"]["last_run"] is None
    assert next(f for f in scheduled["functions"] if f["name"] == "tick")["schedule"]["schedule"] == "every 20 s"
    started = cluster.cli("run", "scheduled/nightly", "--json")
    assert started.returncode == 0, started.stderr
    call_id = json.loads(started.stdout)["call_id"]
    done = cluster.wait_for(
        lambda: next((r for r in runs(cluster, "scheduled/nightly") if r["status"] == "succeeded"), None),
        timeout=60,
        what="the triggered run to succeed",
    )
    assert done["call_id"] == call_id and done["trigger"] == "manual" and done["due_at"] is None
    record = requests.get(f"{cluster.url}/scheduled/calls/{call_id}", timeout=30).json()
    assert record["status"] == "succeeded" and record["result"] == 3
    # over the gateway with the admin credential (and refused without it)
    from raygpu.sdk.admin import admin_key

    target = {"app": "scheduled", "function": "nightly"}
    assert cluster.post("/_raygpu/admin/schedule_run", target).status_code == 401
    admin = {"Authorization": f"Bearer {admin_key()}"}
    over = cluster.post("/_raygpu/admin/schedule_run", target, headers=admin)
    assert over.status_code == 200, over.text
    gateway_run = over.json()["result"]
    assert gateway_run["trigger"] == "manual" and gateway_run["call_id"]
    listed = cluster.post("/_raygpu/admin/schedule_runs", {**target, "limit": 5}, headers=admin).json()["result"]
    assert gateway_run["call_id"] in [r["call_id"] for r in listed]
    assert cluster.post("/_raygpu/admin/schedule_runs", {**target, "limit": 0}, headers=admin).status_code == 400
    text = cluster.cli("status", "scheduled").stdout
    assert "nightly: cron '0 3 * * *' (Europe/Berlin); next run" in text and gateway_run["call_id"] in text
    assert cluster.cli("run", "scheduled/nope").returncode == 1
    assert "no function 'nope'" in cluster.cli("run", "scheduled/nope").stderr
    assert "APP/FN" in cluster.cli("runs", "scheduled").stderr


def test_a_run_that_outlasts_its_period_makes_the_next_one_skip(cluster, scheduled):
    def skipped():
        found = runs(cluster, "scheduled/overrun")
        return next((r for r in found if r["status"] == "skipped"), None)

    run = cluster.wait_for(skipped, timeout=60, what="a skipped run of overrun")
    assert "the previous run (call " in run["reason"] and "was still going" in run["reason"]
    assert run["call_id"] is None and run["due_at"] is not None


def test_a_period_runs_on_a_replica_started_ahead_of_it_and_survives_a_restart(cluster, scheduled):
    live_at = scheduled["deployed_at"]

    def succeeded(n: int):
        def check():
            done = [r for r in runs(cluster, "scheduled/tick") if r["status"] == "succeeded"]
            return sorted(done, key=lambda r: r["due_at"]) if len(done) >= n else None

        return check

    # restart the store and the scheduler just before the second due time: it runs once, and on a
    # replica started ahead of it
    second_due = live_at + 2 * PERIOD_S
    first = cluster.wait_for(succeeded(1), timeout=60, what="the first scheduled run of tick")[0]
    time.sleep(max(0.0, second_due - 2.0 - time.time()))
    ray.kill(ray.get_actor(constants.STORE_ACTOR_NAME, namespace="raygpu"), no_restart=False)
    ray.kill(ray.get_actor(SCHEDULER_ACTOR_NAME, namespace="raygpu"), no_restart=False)
    first, second = cluster.wait_for(succeeded(2), timeout=60, what="the run due during the restart")[:2]
    assert [first["due_at"], second["due_at"]] == [live_at + PERIOD_S, second_due]
    assert first["trigger"] == second["trigger"] == "schedule"
    dues = sorted(r["due_at"] for r in runs(cluster, "scheduled/tick") if r["trigger"] == "schedule")
    assert len(dues) == len(set(dues)), f"a due time ran twice: {dues}"
    assert dues[:2] == [live_at + PERIOD_S, second_due], f"a due time was lost: {dues}"
    assert second["started_at"] - second_due < 15.0  # within the grace of a due time found late

    # the ledger: each run's replica started before its run was due, and the first had stopped
    # (the function at zero) before the second's started
    meter = ray.get_actor(METER_ACTOR_NAME, namespace="raygpu")

    def replicas_serving():
        """Each run's replica as the ledger spans it (start of its first phase, end of its last)."""
        by_replica: dict[str, list[dict]] = {}
        for iv in ray.get(meter.intervals.remote("scheduled", "tick")):
            by_replica.setdefault(iv["replica"], []).append(iv)
        spans = sorted((min(iv["start"] for iv in ivs), max(iv["end"] for iv in ivs)) for ivs in by_replica.values())
        found = [[s for s in spans if s[0] <= run["started_at"] <= s[1] + 1.0] for run in (first, second)]
        return [f[0] for f in found] if all(found) else None

    serving = cluster.wait_for(replicas_serving, timeout=30, what="the ledger's record of both runs' replicas")
    assert serving[0] != serving[1], f"one replica served both runs: {serving}"
    assert serving[0][0] < first["due_at"] and serving[1][0] < second_due, f"a replica started late: {serving}"
    assert serving[0][1] < serving[1][0], "the function was not at zero between its runs"
    assert first["started_at"] - first["due_at"] < 2.0

    # stopping the app ends its schedules
    assert cluster.cli("stop", "scheduled").returncode == 0
    scheduler = ray.get_actor(SCHEDULER_ACTOR_NAME, namespace="raygpu")
    cluster.wait_for(
        lambda: not any(k.startswith("scheduled/") for k in ray.get(scheduler.state.remote())["functions"]),
        timeout=10,
        what="the scheduler to drop the stopped app",
    )
