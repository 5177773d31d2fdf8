"""Parking, without a cluster: the rule that takes functions at rest out of Serve and brings them
back, the policy's quiet reports, and the store's record of both."""

import asyncio
import hashlib
import math
from types import SimpleNamespace

import pytest

from autoscaling.parking import QuietReport, parked_after, parks, wakes
from autoscaling.serve_adapter import RaygpuServePolicy
from deployments.gateway.routing import RoutingTable
from deployments.store.actor import ControlPlaneStore
from raygpu.cli.quantities import parse_duration

ADMIN = "rga_test-admin-credential"
ADMIN_HASH = hashlib.sha256(ADMIN.encode()).hexdigest()
NOW = 1_800_000_000.0


def test_a_function_parks_once_quiet_for_the_delay_and_not_before():
    report = QuietReport(since=NOW - 599.0)
    assert not parks(NOW, report, 600.0, min_containers=0)
    assert parks(NOW + 1.0, report, 600.0, min_containers=0)
    assert not parks(NOW, None, 600.0, min_containers=0)  # never reported quiet: it may be busy


def test_functions_kept_warm_or_wanted_soon_never_park():
    quiet_long = NOW - 10_000.0
    assert not parks(NOW, QuietReport(quiet_long), 600.0, min_containers=1)
    assert not parks(NOW, QuietReport(quiet_long, wake_at=NOW + 300.0), 600.0, min_containers=0)
    assert parks(NOW, QuietReport(quiet_long, wake_at=NOW + 900.0), 600.0, min_containers=0)
    assert not parks(NOW, QuietReport(quiet_long), 0.0, min_containers=0)  # parking off


def test_a_parked_function_returns_ahead_of_its_pre_warm_and_stays_out_otherwise():
    reports = {"cron": QuietReport(NOW - 5000.0, wake_at=NOW + 15.0), "rare": QuietReport(NOW - 5000.0)}
    kept_out = parked_after(NOW, {"cron": 0, "rare": 0}, {"cron", "rare"}, reports, 600.0, lead_s=20.0)
    assert kept_out == {"rare"}
    assert wakes(NOW, reports["cron"], 20.0) and not wakes(NOW, reports["rare"], 20.0)


def test_parking_turned_off_brings_every_function_back():
    reports = {"a": QuietReport(NOW - 5000.0)}
    assert parked_after(NOW, {"a": 0}, {"a"}, reports, 0.0, 20.0) == set()


def test_a_function_whose_minimum_was_raised_comes_back():
    reports = {"a": QuietReport(NOW - 5000.0)}
    assert parked_after(NOW, {"a": 1}, {"a"}, reports, 600.0, 20.0) == set()


def test_parking_one_app_is_decided_per_function():
    reports = {"old": QuietReport(NOW - 700.0), "new": QuietReport(NOW - 10.0)}
    assert parked_after(NOW, {"old": 0, "new": 0, "busy": 0}, set(), reports, 600.0, 20.0) == {"old"}


@pytest.mark.parametrize(
    "raw", [None, "x", [1.0], [1.0, 2.0, 3.0], ["a", None], [math.nan, None], [1.0, math.inf], [True, None]]
)
def test_malformed_quiet_reports_are_refused(raw):
    assert QuietReport.from_wire(raw) is None


def test_quiet_reports_round_trip():
    assert QuietReport.from_wire([NOW, None]) == QuietReport(NOW)
    assert QuietReport.from_wire((NOW, NOW + 5)) == QuietReport(NOW, NOW + 5)


class RecordingLink:
    """Stands in for the store link's outbox only: what the policy would send."""

    def __init__(self):
        self.quiet: list[tuple[str, object]] = []
        self.saved: list[dict] = []

    def take(self, key):
        return []

    def report_quiet(self, key, report):
        self.quiet.append((key, report))

    def save_state(self, app, function, state):
        self.saved.append(state)

    def record_scale_event(self, *args):
        pass

    def loaded_state(self, app, function):
        return True, None

    def schedule(self, key):
        return None


def context(target: int, running: int, inflight: float = 0.0, state=None) -> SimpleNamespace:
    return SimpleNamespace(
        current_num_replicas=running, target_num_replicas=target, total_num_requests=inflight, policy_state=state or {}
    )


def test_the_policy_reports_rest_at_zero_once_and_busy_again_at_a_call():
    policy = RaygpuServePolicy("shop", "add", "no-such-store", "no-such-namespace", idle_window_s=60.0)
    link = RecordingLink()
    policy.store = link
    replicas, state = policy(context(0, 0))
    assert replicas == 0
    assert len(link.quiet) == 1 and link.quiet[0][0] == "shop/add"
    since, wake_at = link.quiet[0][1]
    assert wake_at is None and abs(since - __import__("time").time()) < 5
    for _ in range(3):
        replicas, state = policy(context(0, 0, state=state))
    assert len(link.quiet) == 1  # nothing new: nothing sent
    policy(context(0, 0, inflight=1.0, state=state))
    assert link.quiet[-1] == ("shop/add", None)


def test_a_policy_that_learned_something_saves_it_when_it_comes_to_rest():
    policy = RaygpuServePolicy("shop", "add", "no-such-store", "no-such-namespace", idle_window_s=60.0)
    link = RecordingLink()
    policy.store = link
    policy._loading = False
    policy._learned = True
    policy(context(0, 0))
    assert len(link.saved) == 1 and link.quiet  # saved before the parker may take it out of Serve


def test_the_store_keeps_quiet_reports_and_skips_malformed_ones(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        taken = await store.record_quiet(
            {"shop/add": [NOW, None], "shop/mul": [NOW, NOW + 60], "bad": [NOW, None], "shop/x": "nope", 7: [NOW, 1]}
        )
        quiet = await store.quiet_functions()
        await store.record_quiet({"shop/add": None})
        after = await store.quiet_functions()
        await store.forget_quiet(["shop/mul"])
        return taken, quiet, after, await store.quiet_functions(), await store.record_quiet("not a dict")

    taken, quiet, after, forgotten, refused = asyncio.run(main())
    assert taken == 2 and quiet == {"shop/add": [NOW, None], "shop/mul": [NOW, NOW + 60]}
    assert after == {"shop/mul": [NOW, NOW + 60]} and forgotten == {} and refused == 0


def test_only_the_admin_publishes_parked_functions_and_the_gateway_sees_them(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        before = await store.routing_table()
        with pytest.raises(PermissionError):
            await store.set_parked("", "shop", ["add"])
        with pytest.raises(PermissionError):
            await store.set_parked("wrong", "shop", ["add"])
        with pytest.raises(ValueError):
            await store.set_parked(ADMIN, "shop", "add")
        generation = await store.set_parked(ADMIN, "shop", ["mul", "add"])
        same = await store.set_parked(ADMIN, "shop", ["add", "mul"])
        table = await store.routing_table()
        await store.set_parked(ADMIN, "shop", [])
        return before, generation, same, table, await store.routing_table()

    before, generation, same, table, cleared = asyncio.run(main())
    assert before["parked"] == {} and generation > before["generation"] and same == generation
    assert table["parked"] == {"shop": ["add", "mul"]} and cleared["parked"] == {}
    routing = RoutingTable({**table, "apps": {}})
    assert routing.parked == {("shop", "add"), ("shop", "mul")}


def test_park_after_takes_zero_and_durations():
    assert parse_duration("0", "--park-after", least_s=1.0, allow_zero=True) == 0.0
    assert parse_duration("10m", "--park-after", least_s=1.0, allow_zero=True) == 600.0
    for bad in ("-5", "nan", "0.5", "soon", "20y"):
        with pytest.raises(ValueError, match="--park-after"):
            parse_duration(bad, "--park-after", least_s=1.0, allow_zero=True)


def test_a_function_that_reaches_zero_after_its_replica_stopped_reports_its_rest():
    policy = RaygpuServePolicy("shop", "add", "no-such-store", "no-such-namespace", idle_window_s=0.0)
    link = RecordingLink()
    policy.store = link
    _, state = policy(context(1, 1, inflight=1.0))  # a call on a running replica
    _, state = policy(context(1, 1, state=state))  # done: the policy lets it go
    _, state = policy(context(0, 1, state=state))  # Serve stops the replica
    assert link.quiet == [] or link.quiet[-1][1] is None
    for _ in range(3):  # at zero with nothing new
        _, state = policy(context(0, 0, state=state))
    assert link.quiet and link.quiet[-1][0] == "shop/add" and link.quiet[-1][1] is not None


def test_a_function_brought_back_for_a_call_keeps_its_starting_replica_until_it_ran():
    """Brought back with one replica starting, the call that caused it not yet in flight: the
    policy must not stop that replica on its first ticks (a short idle window has passed already)."""
    policy = RaygpuServePolicy("shop", "add", "no-such-store", "no-such-namespace", idle_window_s=0.0)
    policy.store = RecordingLink()
    replicas, state = policy(context(1, 0))  # the deployment started with one replica, none running
    assert replicas == 1
    replicas, state = policy(context(1, 0, state=state))
    assert replicas == 1
    replicas, state = policy(context(1, 1, state=state))  # running: held a little longer for its call
    assert replicas == 1
    policy._hold_until = 0.0  # the hold is over
    replicas, _ = policy(context(1, 1, state=state))
    assert replicas == 0


def test_a_deployment_started_at_zero_holds_nothing():
    policy = RaygpuServePolicy("shop", "add", "no-such-store", "no-such-namespace", idle_window_s=0.0)
    policy.store = RecordingLink()
    assert policy(context(0, 0))[0] == 0
    assert policy(context(1, 1, inflight=0.0))[0] == 0  # a later start is the policy's own business


def test_a_new_policy_clears_the_rest_its_predecessor_reported():
    """A function's previous policy (an earlier version, a restarted controller) may have left a
    rest report behind; the new one's first busy decision must replace it, or the function is
    parked under a call."""
    policy = RaygpuServePolicy("shop", "add", "no-such-store", "no-such-namespace", idle_window_s=60.0)
    link = RecordingLink()
    policy.store = link
    policy(context(1, 0, inflight=1.0))  # its first decision: busy
    assert link.quiet == [("shop/add", None)]
    policy(context(1, 0, inflight=1.0))
    assert link.quiet == [("shop/add", None)]  # only changes after that


def live_version(names, live_at=0.0, back_at=None, parked=()):
    from deployments.parking import LiveVersion
    from deployments.spec import DeployedFunction, FunctionSpec

    functions = [DeployedFunction(spec=FunctionSpec(name=n), deployment=n, serve_app="app--v2") for n in names]
    return LiveVersion("shop", 2, "app--v2", functions, set(parked), back_at=back_at or {}, live_at=live_at)


def test_a_new_version_is_at_rest_no_earlier_than_it_went_live():
    reports = {"shop/add": [NOW - 5000.0, None], "shop/mul": [NOW - 5000.0, None]}
    fresh = live_version(["add", "mul"], live_at=NOW - 5.0)
    assert fresh.parked_after(reports, 600.0, NOW) == set()  # the old version's rest does not count
    assert fresh.parked_after(reports, 600.0, NOW + 600.0) == {"add", "mul"}
    back = live_version(["add", "mul"], back_at={"add": NOW - 10.0})
    assert back.parked_after(reports, 600.0, NOW) == {"mul"}  # brought back just now: not at rest


def test_a_new_live_version_clears_what_was_published_parked(tmp_path):
    async def main():
        store = ControlPlaneStore(str(tmp_path / "state.db"), ADMIN_HASH)
        spec = {"spec": {"name": "add"}, "deployment": "add"}
        v1 = await store.begin_version(ADMIN, "shop", "shop.py", [spec], {})
        await store.mark_live(ADMIN, "shop", v1)
        await store.set_parked(ADMIN, "shop", ["add"])
        parked_before = (await store.routing_table())["parked"]
        v2 = await store.begin_version(ADMIN, "shop", "shop.py", [spec], {})
        await store.mark_live(ADMIN, "shop", v2)
        return parked_before, (await store.routing_table())["parked"]

    before, after = asyncio.run(main())
    assert before == {"shop": ["add"]} and after == {}
