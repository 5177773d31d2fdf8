"""Warm workers that hold an app, on the real cluster: before a node holds a worker of the app, its
replica starts on a generic torch warm worker and runs every hook; once one holds it (and the
deployment took its app env at rest), a class's `snap=True` hook runs in a warm worker before the
call and the replica that answers runs in that process (its plain hook after); a new
deploy with changed code gets a new worker; a hook that initialises CUDA gets no worker and its
replica refuses with the reason; over the node's warm-memory budget the least recently called app's
worker goes; a function with `enable_memory_snapshot=True` is answered in the worker that loaded it."""

import json
import time

import pytest
import ray
from conftest import APPS

from deployments import constants
from deployments.node.warm_pool import pool_actor_name


def units(cluster) -> dict[str, dict]:
    out = cluster.cli("pool", "--json")
    assert out.returncode == 0, out.stderr
    return {u["unit"]: u for s in json.loads(out.stdout) for u in (s.get("apps") or {}).get("units", [])}


def held_worker(cluster, function: str, timeout: float = 120) -> tuple[str, int]:
    """(unit key, pid) of the idle warm worker holding snapped/`function`, once there is one."""

    def holding():
        for key, unit in units(cluster).items():
            if unit["function"] == function:
                ready = [w["pid"] for w in unit["idle"] if w["holds"]]
                if ready:
                    return key, ready[0]
        return None

    return cluster.wait_for(holding, timeout=timeout, what=f"a warm worker holding snapped/{function}")


def in_app_env(function: str) -> bool:
    """Whether snapped/`function`'s deployment runs in its app unit's runtime env now."""
    from deployments.serve_apps import options_from, options_key
    from deployments.store.actor import get_store

    store = get_store()
    live = ray.get(store.live_app.remote("snapped"))
    serve_app = live["functions"][0]["serve_app"]
    return function in options_from(ray.get(store.get_setting.remote(options_key(serve_app), None))).app_workers


def at_zero(cluster, function: str) -> None:
    cluster.wait_for(
        lambda: (
            not any(
                r["state"] == "RUNNING"
                for f in cluster.status("snapped").functions
                if f.name == function
                for r in [x.model_dump() for x in f.replica_details]
            )
        ),
        timeout=60,
        what=f"{function} at zero",
    )


def held_and_taken(cluster, function: str) -> tuple[str, int]:
    """A worker holds snapped/`function` and its deployment took the app env (at rest)."""
    found = held_worker(cluster, function)
    cluster.wait_for(lambda: in_app_env(function), timeout=60, what=f"{function}'s deployment in its app env")
    return found


@pytest.fixture(scope="module")
def snapped(cluster):
    cluster.deploy(APPS / "snapped.py")
    yield cluster
    cluster.cli("stop", "snapped")


def test_a_snap_hook_runs_ahead_in_the_worker_whose_process_answers_the_first_call(snapped):
    cluster = snapped
    # right after the deploy no node holds a worker of it: a generic torch worker, every hook there
    assert not in_app_env("Snapper")
    first = cluster.post("/snapped/Snapper/info", {}).json()
    assert first["warm"] == "torch" and first["pid"] == first["snapped"]["pid"] == first["placed"]["pid"]
    at_zero(cluster, "Snapper")
    key, pid = held_and_taken(cluster, "Snapper")
    assert pid != first["pid"]
    called_at = time.time()
    info = cluster.post("/snapped/Snapper/info", {}).json()
    assert info["pid"] == pid == info["snapped"]["pid"] == info["placed"]["pid"] and info["warm"] == "app"
    assert info["snapped"]["at"] < called_at < info["placed"]["at"]
    assert info["snapped"]["mode"] == "ahead"  # the image's variables were set in the worker too
    cluster.wait_for(
        lambda: (
            "adopted" in next(f for f in cluster.status("snapped").functions if f.name == "Snapper").last_start_phases
        ),
        timeout=30,
        what="the adopted phase in the start phases",
    )

    # changed code: a new worker holds the new code, the old one is stopped and never used
    source = (APPS / "snapped.py").read_text().replace("CODE_VERSION = 1", "CODE_VERSION = 2")
    changed = APPS.parent / ".snapped_v2.py"
    changed.write_text(source)
    try:
        cluster.deploy(changed)
    finally:
        changed.unlink()
    new_key, new_pid = held_and_taken(cluster, "Snapper")
    assert new_key != key and new_pid != pid
    cluster.wait_for(lambda: key not in units(cluster), timeout=30, what="the old code's worker to go")
    at_zero(cluster, "Snapper")
    again = cluster.post("/snapped/Snapper/info", {}).json()
    assert again["code"] == 2 and again["pid"] == new_pid == again["snapped"]["pid"]


def test_a_snap_hook_that_initialises_cuda_gets_no_worker_and_its_replica_says_why(snapped):
    cluster = snapped

    def refused():
        return next((u for u in units(cluster).values() if u["function"] == "CudaSnap" and u["reason"]), None)

    unit = cluster.wait_for(refused, timeout=120, what="the reason CudaSnap has no warm worker")
    assert "CudaSnap.load initialised CUDA" in unit["reason"] and not unit["idle"]
    answer = cluster.post("/snapped/CudaSnap/go", {})
    assert answer.status_code == 500 and answer.json()["error"]["type"] == "StartupError"
    assert "initialised CUDA before the replica has its GPU" in answer.json()["error"]["message"]


def test_over_the_warm_memory_budget_the_least_recently_called_app_goes(snapped):
    from raygpu.sdk.admin import admin_key

    cluster = snapped
    _, other_pid = held_worker(cluster, "Other")
    snapper_key, _ = held_worker(cluster, "Snapper")
    # Snapper was called in the test before; Other never: with room for one worker, Other's goes.
    # The room: one and a half of Snapper's holding worker (its memory as the pool measures it may
    # differ a little; every worker here has torch imported, so two do not fit)
    snapper_rss = max([w["rss_bytes"] for w in units(cluster)[snapper_key]["idle"] if w["holds"]], default=0)
    pool = ray.get_actor(pool_actor_name(ray.get_runtime_context().get_node_id()), namespace=constants.RAY_NAMESPACE)
    assert snapper_rss > 0
    budget = int(snapper_rss * 1.5)
    ray.get(pool.use_app_workers.remote(admin_key(), budget))
    try:
        cluster.wait_for(
            lambda: not any(u["function"] == "Other" and u["idle"] for u in units(cluster).values()),
            timeout=30,
            what="the least recently called app's worker to go",
        )
        kept = units(cluster)
        # (its worker may have been taken meanwhile: the policy pre-warms a class called before)
        assert any(u["function"] == "Snapper" and u["kept"] for u in kept.values())
        assert not any(u["function"] == "Other" and u["kept"] for u in kept.values())
        assert "over --warm-memory" in cluster.cli("pool").stdout
    finally:
        ray.get(pool.use_app_workers.remote(admin_key(), None))
    # a call of it makes it the most recently called: it is kept again, over Snapper
    ray.get(pool.use_app_workers.remote(admin_key(), budget))
    try:
        assert cluster.post("/snapped/Other/pid_of_load", {}).status_code == 200
        cluster.wait_for(
            lambda: any(u["function"] == "Other" and u["kept"] for u in units(cluster).values()),
            timeout=30,
            what="the most recently called app kept",
        )
    finally:
        ray.get(pool.use_app_workers.remote(admin_key(), None))


def test_a_function_with_enable_memory_snapshot_is_answered_in_the_worker_that_loaded_it(snapped):
    cluster = snapped
    _, pid = held_and_taken(cluster, "ahead")
    answer = cluster.post("/snapped/ahead", {}).json()
    assert answer == {"pid": pid, "warm": "app"}
    cluster.wait_for(
        lambda: (
            "adopted" in next(f for f in cluster.status("snapped").functions if f.name == "ahead").last_start_phases
        ),
        timeout=30,
        what="the adopted phase of the function's replica",
    )
    note = next(f for f in cluster.status("snapped").functions if f.name == "ahead").warm_workers
    assert note is not None and note.startswith("held by warm workers"), note


def test_a_class_whose_image_installs_pip_packages_gets_no_worker_and_says_why(snapped):
    """Its replicas run in an environment of their own, which no warm worker has: it starts as
    without one, never in the cluster's environment (not called here: building it needs PyPI)."""
    cluster = snapped
    note = next(f for f in cluster.status("snapped").functions if f.name == "Piped").warm_workers
    assert note is not None and "pip packages" in note, note
    assert not any(u["function"] == "Piped" for u in units(cluster).values())
    from deployments.serve_apps import options_from, options_key
    from deployments.store.actor import get_store

    store = get_store()
    serve_app = ray.get(store.live_app.remote("snapped"))["functions"][0]["serve_app"]
    options = options_from(ray.get(store.get_setting.remote(options_key(serve_app), None)))
    assert "Piped" not in options.app_workers
    # what Serve starts its replicas with: the image's own environment
    from deployments.serve_apps import serve_details

    deployment = serve_details()["applications"][serve_app]["deployments"]["Piped"]
    runtime_env = deployment["deployment_config"]["ray_actor_options"]["runtime_env"]
    assert runtime_env.get("pip") and "six==1.16.0" in json.dumps(runtime_env["pip"]), runtime_env
    assert "RAYGPU_WARM_UNIT" not in json.dumps(runtime_env)
