"""Schedules without a cluster: due times (croniter's, across daylight-saving changes; periods from
the version's start), which due time a scheduler runs (once each, late within grace, no backfill),
validation at decoration, the store's run records, and the policy's warm window around each run."""

import asyncio
import hashlib
import json
import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import raygpu
from autoscaling.policy import RaygpuPolicy, ScalingConfig, ScheduledRun
from deployments.schedules import (
    MISFIRE_GRACE_S,
    CronSchedule,
    PeriodSchedule,
    latest_due,
    next_due_after,
    plan_due,
)
from deployments.spec import DeployedFunction, FunctionSpec
from deployments.store.actor import ControlPlaneStore

ADMIN = "rga_test-admin-credential"
ADMIN_HASH = hashlib.sha256(ADMIN.encode()).hexdigest()
BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: ZoneInfo = BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def local(t: float, zone: ZoneInfo = BERLIN) -> str:
    return datetime.fromtimestamp(t, zone).isoformat()


# --- due times ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression,zone",
    [
        ("0 3 * * *", "UTC"),
        ("*/7 * * * *", "UTC"),
        ("15 9 * * 1-5", "America/New_York"),
        ("0 0 1 * *", "Asia/Kolkata"),
        ("@hourly", "UTC"),
        ("30 4 * * 0", "Europe/Berlin"),
    ],
)
def test_cron_due_times_are_croniters_away_from_daylight_saving_changes(expression, zone):
    schedule = CronSchedule(expression=expression, timezone=zone)
    rng = random.Random(expression)
    tz = ZoneInfo(zone)
    for _ in range(20):
        # January and July: no daylight-saving change within the next days anywhere used here
        start = datetime(
            2026, rng.choice([1, 7]), rng.randint(2, 20), rng.randint(0, 23), rng.randint(0, 59), tzinfo=tz
        )
        expected = croniter(expression, start).get_next(datetime)
        assert schedule.next_after(start.timestamp()) == expected.timestamp()
        assert schedule.latest_at_or_before(expected.timestamp()) == expected.timestamp()
        assert schedule.latest_at_or_before(expected.timestamp() - 1) < expected.timestamp()


def test_a_local_time_that_does_not_exist_is_skipped_and_one_that_occurs_twice_runs_once():
    daily = CronSchedule(expression="30 2 * * *", timezone="Europe/Berlin")
    # 2026-03-29 02:30 does not exist in Berlin (clocks go from 02:00 to 03:00)
    t = daily.next_after(at("2026-03-28T12:00:00"))
    assert local(t) == "2026-03-30T02:30:00+02:00"
    # 2026-10-25 02:30 occurs twice (clocks go back from 03:00 to 02:00): it runs at the first
    t = daily.next_after(at("2026-10-24T12:00:00"))
    assert local(t) == "2026-10-25T02:30:00+02:00"
    assert local(daily.next_after(t)) == "2026-10-26T02:30:00+01:00"
    every_20 = CronSchedule(expression="*/20 * * * *", timezone="Europe/Berlin")
    times, t = [], at("2026-10-25T01:50:00")
    for _ in range(8):
        t = every_20.next_after(t)
        times.append(local(t))
    # each wall time of the repeated hour once, then on after it: no time runs twice
    assert times == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:20:00+02:00",
        "2026-10-25T02:40:00+02:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T03:20:00+01:00",
        "2026-10-25T03:40:00+01:00",
        "2026-10-25T04:00:00+01:00",
        "2026-10-25T04:20:00+01:00",
    ]
    assert len(set(times)) == len(times) and all(b > a for a, b in zip(times, times[1:]))


def test_a_period_counts_from_the_moment_its_version_went_live():
    every = PeriodSchedule(seconds=20)
    live_at = 1_000.5
    assert next_due_after(every, 0, live_at) == 1_020.5
    assert next_due_after(every, 1_020.5, live_at) == 1_040.5
    assert next_due_after(every, 1_039.0, live_at) == 1_040.5
    assert latest_due(every, 1_019.0, live_at) is None
    assert latest_due(every, 1_045.0, live_at) == 1_040.5
    assert raygpu.Period(days=1, hours=2, minutes=3, seconds=4).seconds == 86400 + 7200 + 180 + 4
    assert raygpu.Period(hours=1).describe() == "every 1 h"


# --- which due time runs --------------------------------------------------------------------


def test_each_due_time_runs_once_late_within_grace_and_nothing_is_backfilled():
    every = PeriodSchedule(seconds=600)
    live_at = 0.0
    assert plan_due(every, live_at, None, 599.0).run_due is None
    first = plan_due(every, live_at, None, 600.2)
    assert (first.run_due, first.next_due) == (600.0, 1200.0)
    # recorded: never again, whatever restarts
    assert plan_due(every, live_at, 600.0, 601.0).run_due is None
    # a restart across the due time: found late, within grace, it still runs
    late = plan_due(every, live_at, 600.0, 1200.0 + MISFIRE_GRACE_S - 1)
    assert late.run_due == 1200.0 and late.next_due == 1800.0
    # down for hours: no backfill, the next run is the next due time after it is back
    back = plan_due(every, live_at, 600.0, 10_000.0)
    assert back.run_due is None and back.next_due == 10_200.0
    # a short period's grace is a share of the period, so a late run never crowds the next one
    short = PeriodSchedule(seconds=20)
    assert plan_due(short, 0.0, 20.0, 40.0 + 14.0).run_due == 40.0
    assert plan_due(short, 0.0, 20.0, 40.0 + 16.0).run_due is None


def test_a_new_version_of_a_cron_schedule_does_not_run_a_time_before_it_went_live():
    nightly = CronSchedule(expression="0 3 * * *")
    three = datetime(2026, 5, 5, 3, tzinfo=UTC).timestamp()
    assert plan_due(nightly, three + 10, None, three + 20).run_due is None
    assert plan_due(nightly, three - 10, None, three + 20).run_due == three


# --- validation at decoration ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: raygpu.Cron("61 * * * *"), "invalid cron expression '61 * * * *'"),
        (lambda: raygpu.Cron("0 3 * *"), "must have five fields"),
        (lambda: raygpu.Cron("0 0 30 2 *"), "never comes due"),
        (lambda: raygpu.Cron("0 3 * * *", timezone="Mars/Olympus"), "unknown timezone 'Mars/Olympus'"),
        (lambda: raygpu.Period(seconds=9), "at least 10 seconds"),
        (lambda: raygpu.Period(minutes=-1), "non-negative"),
    ],
)
def test_an_invalid_schedule_is_refused_where_it_is_written(make, reason):
    with pytest.raises(raygpu.InvalidSpecError) as refused:
        make()
    assert reason in str(refused.value)


def test_schedules_go_on_functions_that_run_without_arguments():
    app = raygpu.App("scheduled")

    @app.function(schedule=raygpu.Period(minutes=5))
    def fine(limit: int = 10, *rest, **options):
        return limit

    assert isinstance(fine.spec.schedule, PeriodSchedule)
    with pytest.raises(raygpu.InvalidSpecError, match="no arguments, but day has no default"):

        @app.function(schedule=raygpu.Cron("0 3 * * *"))
        def needs_day(day: str):
            return day

    with pytest.raises(raygpu.InvalidSpecError, match="goes on functions"):

        @app.cls(schedule=raygpu.Period(minutes=5))
        class Job:
            @raygpu.method()
            def go(self):
                return 1

    with pytest.raises(raygpu.InvalidSpecError, match="must return, not yield"):

        @app.function(schedule=raygpu.Period(minutes=5))
        def stream():
            yield 1

    with pytest.raises(raygpu.InvalidSpecError, match="schedule= takes raygpu.Cron"):

        @app.function(schedule="0 3 * * *")
        def text():
            return 1

    with pytest.raises(raygpu.InvalidSpecError, match="goes on functions"):
        app.vllm("chat", model="/models/x", schedule=raygpu.Period(hours=1))


def test_a_schedule_travels_with_the_spec_as_json():
    spec = FunctionSpec(name="nightly", schedule=raygpu.Cron("0 3 * * *", timezone="Europe/Berlin"))
    again = FunctionSpec.model_validate(json.loads(spec.model_dump_json()))
    assert again.schedule == CronSchedule(expression="0 3 * * *", timezone="Europe/Berlin")
    assert again.schedule.describe() == "cron '0 3 * * *' (Europe/Berlin)"


# --- the store's run records ----------------------------------------------------------------


def _scheduled_app(store: ControlPlaneStore, queue: int = 100) -> None:
    async def deploy():
        spec = FunctionSpec(
            name="tick", schedule=raygpu.Period(seconds=20), max_containers=1, max_inputs=1, max_queue=queue
        )
        deployed = DeployedFunction(spec=spec, deployment="tick").model_dump(mode="json")
        version = await store.begin_version(ADMIN, "jobs", "jobs.py", [deployed])
        await store.mark_live(ADMIN, "jobs", version)

    return deploy()


def test_the_store_records_one_run_per_due_time_and_skips_a_run_while_the_last_goes(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        await _scheduled_app(store)
        first = await store.start_scheduled_run(ADMIN, "jobs", "tick", 100.0)
        assert first["new"] and first["run"]["status"] == "pending" and first["run"]["call_id"]
        again = await store.start_scheduled_run(ADMIN, "jobs", "tick", 100.0)
        assert not again["new"] and again["run"]["run_id"] == first["run"]["run_id"]
        assert await store.last_scheduled_due("jobs", "tick") == 100.0
        work = await store.call_work(first["run"]["call_id"])
        assert work["scheduled"] and work["arguments"] == b"{}"
        # the first run still going: the next due time is recorded as skipped, with the reason
        overrun = await store.start_scheduled_run(ADMIN, "jobs", "tick", 120.0)
        assert overrun["run"]["status"] == "skipped" and first["run"]["call_id"] in overrun["run"]["reason"]
        assert overrun["run"]["call_id"] is None
        # a manual run is not held back by the running one, and is not a scheduled call
        manual = await store.start_scheduled_run(ADMIN, "jobs", "tick", None, "manual")
        assert manual["run"]["trigger"] == "manual" and manual["run"]["due_at"] is None
        assert not (await store.call_work(manual["run"]["call_id"]))["scheduled"]
        await store.finish_call(first["run"]["call_id"], "succeeded", b"1", None)
        await store.finish_call(manual["run"]["call_id"], "succeeded", b"2", None)
        later = await store.start_scheduled_run(ADMIN, "jobs", "tick", 140.0)
        assert later["run"]["status"] == "pending"
        runs = await store.schedule_runs("jobs", "tick", 10)
        assert [r["status"] for r in runs] == ["pending", "succeeded", "skipped", "succeeded"]
        assert await store.last_scheduled_due("jobs", "tick") == 140.0
        await store.publish_schedule_plans(ADMIN, {"jobs/tick": 160.0, "bad": 1.0})
        assert await store.schedule_plans() == {"jobs/tick": [160.0, True]}
        summary = await store.schedule_summary("jobs", ["tick"])
        assert summary["tick"]["next_due"] == 160.0 and summary["tick"]["last_run"]["due_at"] == 140.0
        # a restarted store still knows the last due time handled
        store.db.close()
        reopened = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        assert await reopened.last_scheduled_due("jobs", "tick") == 140.0
        # and the plans the policies pre-warm from, before the scheduler publishes again
        assert await reopened.schedule_plans() == {"jobs/tick": [160.0, True]}
        assert (await reopened.start_scheduled_run(ADMIN, "jobs", "tick", 140.0))["new"] is False

    asyncio.run(main())


def test_a_run_admission_refuses_is_recorded_skipped_and_runs_need_the_admin_credential(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        await _scheduled_app(store, queue=0)
        held = await store.start_scheduled_run(ADMIN, "jobs", "tick", None, "manual")  # fills the one slot
        assert held["run"]["call_id"]
        refused = await store.start_scheduled_run(ADMIN, "jobs", "tick", None, "manual")
        assert (
            refused["run"]["status"] == "skipped"
            and "admission refused the run (503 QueueFull" in refused["run"]["reason"]
        )
        with pytest.raises(PermissionError):
            await store.start_scheduled_run("rga_wrong", "jobs", "tick", 1.0)
        with pytest.raises(PermissionError):
            await store.publish_schedule_plans(None, {})
        with pytest.raises(LookupError, match="is not deployed"):
            await store.start_scheduled_run(ADMIN, "jobs", "nope", 1.0)
        with pytest.raises(ValueError):
            await store.start_scheduled_run(ADMIN, "jobs", "tick", float("nan"))

    asyncio.run(main())


# --- the policy's warm window ---------------------------------------------------------------


def test_the_policy_starts_a_replica_one_start_before_a_run_and_keeps_nothing_after_it():
    config = ScalingConfig(idle_window_s=300.0, start_time_s=4.0)
    policy = RaygpuPolicy(config)
    lead = config.prewarm_lead_s
    policy.plan_schedule(ScheduledRun(due=1_000.0), 900.0)
    assert policy.decide(900.0, 0, 0, 0) == (0, 1_000.0 - lead)
    assert policy.decide(1_000.0 - lead, 0, 0, 0)[0] == 1  # one measured start ahead
    assert policy.decide(1_000.0, 1, 0, 1)[0] == 1  # the run is in flight
    policy.plan_schedule(ScheduledRun(due=1_020.0, running=True), 1_000.5)
    assert policy.decide(1_003.0, 1, 0, 1)[0] == 1
    # the run ended: to zero at once, not after the 300 s idle window a call would keep, even while
    # Serve's averaged in-flight count still holds the run for a few seconds
    policy.plan_schedule(ScheduledRun(due=1_020.0), 1_004.0)
    assert policy.decide(1_004.0, 1, 0, 0.6)[0] == 0
    assert policy.last_busy is None
    # a caller's own call still keeps the function warm for its idle window
    policy.observe_arrival(1_005.0)
    assert policy.decide(1_005.0, 1, 0, 2)[0] >= 1
    assert policy.decide(1_100.0, 1, 0, 0)[0] == 1
    # a run that never shows up releases the replica after a while
    policy = RaygpuPolicy(config)
    policy.plan_schedule(ScheduledRun(due=2_000.0), 1_900.0)
    assert policy.decide(1_999.0, 0, 0, 0)[0] == 1
    assert policy.decide(2_100.0, 1, 0, 0)[0] == 0


def test_old_run_records_go_with_retention_and_the_last_due_time_stays(tmp_path):
    from deployments.store.db import StateDB
    from deployments.store.schedule_rows import SCHEDULE_RUN_RETENTION_S

    db = StateDB(tmp_path / "state.db")
    now = 10 * SCHEDULE_RUN_RETENTION_S
    db.record_run("jobs", "tick", 1, "schedule", 100.0, now - SCHEDULE_RUN_RETENTION_S - 1, None, "skipped")
    db.record_run("jobs", "tick", 1, "schedule", 120.0, now - 10, None, "skipped")
    assert db.retention_batch("schedule_runs", now, 100) == 1
    assert [r["due_at"] for r in db.runs("jobs", "tick", 10)] == [120.0]
    assert db.last_due("jobs", "tick") == 120.0
    db.record_run("jobs", "tick", 1, "schedule", 110.0, now, None, "skipped")  # never moves back
    assert db.last_due("jobs", "tick") == 120.0
