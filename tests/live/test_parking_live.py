"""Parking live: functions at rest leave Serve's application (the controller stops working on them),
every way of calling brings one back with its answer, and the functions that stay keep their replicas."""

import concurrent.futures

import pytest
import ray
from conftest import APPS

from deployments import constants
from deployments.parking import get_parker
from deployments.serve_apps import deployments_of
from deployments.store.actor import get_store
from raygpu.sdk.control import admin_call

PARK_AFTER_S = 3.0
AT_REST = {"rare", "other", "countdown"}


@pytest.fixture(scope="module")
def parked_app(cluster):
    """The parked app, under a park-after short enough to test (the cluster's setting, as `raygpu up
    --park-after` sets it), put back as it was for the modules after this one."""
    previous = ray.get(get_store().get_setting.remote("park_after_s"))
    admin_call("set_setting", "park_after_s", PARK_AFTER_S)
    try:
        cluster.deploy(APPS / "parked.py")
        yield cluster, None
    finally:
        admin_call("set_setting", "park_after_s", constants.DEFAULT_PARK_AFTER_S if previous is None else previous)


def serve_app() -> str:
    live = {a["name"]: a for a in ray.get(get_store().live_apps.remote())}
    return live["parked"]["functions"][0]["serve_app"]


def parked_now() -> set[str]:
    return set(ray.get(get_store().parked.remote()).get("parked", []))


def wait_parked(cluster, names: set[str]) -> None:
    """Until `names` are published as parked and out of Serve's application."""
    cluster.wait_for(
        lambda: names <= parked_now() and not names & deployments_of(serve_app()),
        timeout=60,
        what=f"{sorted(names)} parked",
    )


def kept_replica(cluster) -> str:
    kept = next(f for f in cluster.status("parked").functions if f.name == "kept")
    running = [r.replica_id for r in kept.replica_details if r.state == "RUNNING"]
    assert len(running) == 1, kept.replica_details
    return running[0]


@pytest.mark.slow
def test_functions_at_rest_leave_serve_and_a_call_brings_one_back(parked_app):
    cluster, _ = parked_app
    cluster.wait_for(lambda: kept_replica(cluster), timeout=60, what="the kept replica running")
    before = kept_replica(cluster)
    wait_parked(cluster, AT_REST)
    assert "kept" not in parked_now()  # min_containers > 0 never parks
    assert deployments_of(serve_app()) == {"kept"}
    statuses = {f.name: f.status for f in cluster.status("parked").functions}
    assert statuses["rare"] == "PARKED" and statuses["kept"] != "PARKED"

    response = cluster.post("/parked/rare", {"x": 21})
    assert response.status_code == 200 and response.json() == 42
    assert "rare" not in parked_now() and "rare" in deployments_of(serve_app())
    assert "other" in parked_now()  # only the function called came back
    assert kept_replica(cluster) == before  # redeploying the application left the others' replicas alone
    wait_parked(cluster, {"rare"})  # parked again: the gateway's handle takes it up once it is back
    response = cluster.post("/parked/rare", {"x": 4})
    assert response.status_code == 200 and response.json() == 8


@pytest.mark.slow
def test_concurrent_calls_of_a_parked_function_all_answer(parked_app):
    cluster, _ = parked_app
    wait_parked(cluster, {"other"})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: cluster.post("/parked/other", {"x": x}), range(8)))
    assert [r.status_code for r in answers] == [200] * 8
    assert [r.json() for r in answers] == [x + 100 for x in range(8)]


@pytest.mark.slow
def test_python_calls_streams_and_spawned_calls_bring_functions_back(parked_app):
    import raygpu

    cluster, _ = parked_app
    wait_parked(cluster, AT_REST)
    assert raygpu.lookup("parked", "rare").remote(x=5) == 10
    assert list(raygpu.lookup("parked", "countdown").remote_gen(n=3)) == [3, 2, 1]
    wait_parked(cluster, {"other"})
    call = raygpu.lookup("parked", "other").spawn(x=1)
    assert call.get(timeout=120) == 101


def test_calls_made_as_a_function_is_being_parked_all_succeed(parked_app):
    """The parker publishes a function as parked, then takes it out of Serve: calls made in between
    (spawned, whose runner holds a handle to the deployment going away, and from Python) are sent
    again once it is back, not failed."""
    import time

    import raygpu

    cluster, _ = parked_app
    rare = raygpu.lookup("parked", "rare")
    assert rare.spawn(x=1).get(timeout=120) == 2  # the runner now holds a handle to rare's deployment
    cluster.wait_for(lambda: "rare" in parked_now(), timeout=60, interval=0.02, what="rare published as parked")
    spawned = [rare.spawn(x=x) for x in range(3)]
    assert rare.remote(x=10) == 20
    time.sleep(0.5)
    spawned += [rare.spawn(x=x) for x in range(3, 5)]
    assert [call.get(timeout=120) for call in spawned] == [0, 2, 4, 6, 8]


@pytest.mark.slow
def test_a_streamed_http_call_brings_a_parked_generator_back(parked_app):
    cluster, _ = parked_app
    wait_parked(cluster, {"countdown"})
    response = cluster.post("/parked/countdown", {"n": 2})
    assert response.status_code == 200
    assert [line for line in response.text.splitlines() if line] == ["2", "1"]


@pytest.mark.slow
def test_a_new_version_deploys_beside_parked_functions_and_they_park_again(parked_app):
    cluster, _ = parked_app
    wait_parked(cluster, AT_REST)
    old = serve_app()
    cluster.deploy(APPS / "parked.py")
    assert serve_app() != old
    assert cluster.post("/parked/rare", {"x": 1}).json() == 2
    wait_parked(cluster, AT_REST)
    assert deployments_of(serve_app()) == {"kept"}
    state = ray.get(get_parker().state.remote())
    assert state["last_error"] is None and state["unparks"] >= 1, state
