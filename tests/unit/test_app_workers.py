"""Warm workers that hold an app, without a cluster: `snap=True` hooks run first and once, which
units get app workers and the runtime env they share with their replicas, which fit a node's memory
(least recently called out first), and CUDA refused where no GPU is assigned yet."""

import pytest

import raygpu
from deployments.engines.cuda_guard import CudaBeforeGpuError, cuda_blocked
from deployments.lifecycle import run_enter_hooks, run_snap_hooks, snap_hook_names
from deployments.node.app_workers import (
    ESTIMATED_WORKER_BYTES,
    AppUnit,
    payload_file_name,
    unit_key,
    units_that_fit,
    wants_app_worker,
)
from deployments.node.warm_envs import WARM_ENV_VAR, runtime_env_for
from deployments.replicas.application import deployment_options
from deployments.spec import FunctionSpec, Image

MiB = 2**20


def embedder_app():
    app = raygpu.App("snapper")
    calls = []

    @app.cls(gpu="A10G")
    class Embedder:
        @raygpu.enter(snap=True)
        def load(self):
            calls.append("load")
            self.weights = [1.0, 2.0]

        @raygpu.enter()
        def to_device(self):
            calls.append("to_device")
            self.on_device = list(self.weights)

        @raygpu.method()
        def embed(self, text: str) -> list[float]:
            return self.on_device

    return app, Embedder, calls


def test_snap_hooks_run_first_and_once_and_the_replica_runs_only_the_others():
    app, Embedder, calls = embedder_app()
    assert app.specs["Embedder"].snap_hooks == ["load"] == snap_hook_names(Embedder)
    instance = Embedder.__new__(Embedder)
    run_snap_hooks(instance)  # in the warm worker, before any call
    assert calls == ["load"]
    run_enter_hooks(instance)  # in the replica that adopts it
    assert calls == ["load", "to_device"] and instance.on_device == [1.0, 2.0]
    run_enter_hooks(instance)
    assert calls == ["load", "to_device"]
    # a plain local call runs them all, snap ones first
    calls.clear()
    assert Embedder().embed("x") == [1.0, 2.0] and calls == ["load", "to_device"]


def test_snap_hooks_belong_to_classes():
    from deployments.kinds import checked

    with pytest.raises(ValueError, match="goes on a class's methods"):
        checked(FunctionSpec(name="f", snap_hooks=["load"]))


def test_which_units_get_app_workers_and_their_shared_runtime_env():
    app, _, _ = embedder_app()
    spec = app.specs["Embedder"]
    assert wants_app_worker(spec)
    assert not wants_app_worker(spec.model_copy(update={"min_containers": 1}))  # never at zero
    assert not wants_app_worker(spec.model_copy(update={"image": Image(pip=["numpy"])}))  # its own environment
    assert not wants_app_worker(spec.model_copy(update={"snap_hooks": []}))
    assert not wants_app_worker(spec.model_copy(update={"secrets": ["hf"]}))  # values reach replicas only
    assert wants_app_worker(spec.model_copy(update={"image": Image(env={"MODE": "fast"})}))  # set in the worker too
    key = unit_key("snapper", "Embedder", "ab" * 32)
    assert key == "snapper/Embedder/" + "ab" * 8
    options = deployment_options("snapper", spec, None, "store", "ns", digest="ab" * 32, app_worker=True)
    env = options["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env == {WARM_ENV_VAR: "app", "RAYGPU_WARM_UNIT": key}
    # while no node holds a worker of it, the generic torch warm workers (torch imported already)
    unheld = deployment_options("snapper", spec, None, "store", "ns", digest="ab" * 32)
    assert unheld["ray_actor_options"]["runtime_env"]["env_vars"] == {WARM_ENV_VAR: "torch"}
    # another digest (changed code) is another environment: old workers are never taken
    other = deployment_options("snapper", spec, None, "store", "ns", digest="cd" * 32, app_worker=True)
    assert other["ray_actor_options"]["runtime_env"] != options["ray_actor_options"]["runtime_env"]
    assert payload_file_name(key) != payload_file_name(unit_key("snapper", "Embedder", "cd" * 32))
    # a pip image keeps its own environment; a plain function keeps the torch flavour
    assert runtime_env_for({"pip": ["numpy"]}, "torch", key) == {"pip": ["numpy"]}
    plain = deployment_options(
        "snapper", FunctionSpec(name="f"), None, "store", "ns", digest="ab" * 32, app_worker=True
    )
    assert plain["ray_actor_options"]["runtime_env"]["env_vars"] == {WARM_ENV_VAR: "torch"}


def test_enable_memory_snapshot_asks_for_app_workers_for_functions_and_classes_only():
    from deployments.node.app_workers import app_worker_refusal, runs_ahead

    app = raygpu.App("ahead")

    @app.function(enable_memory_snapshot=True)
    def tokenize(text: str) -> list[str]:
        return text.split()

    @app.cls(enable_memory_snapshot=True)
    class Plain:
        @raygpu.method()
        def go(self) -> int:
            return 1

    @app.function()
    def later(x: int) -> int:
        return x

    function, plain = tokenize.spec, app.specs["Plain"]
    assert runs_ahead(function) and wants_app_worker(function) and wants_app_worker(plain)
    assert not runs_ahead(later.spec) and not wants_app_worker(later.spec)  # asked for by no one
    pinned = function.model_copy(update={"min_containers": 2})
    assert not wants_app_worker(pinned) and "min_containers" in app_worker_refusal(pinned)
    piped = function.model_copy(update={"image": Image(pip=["numpy"])})
    assert "pip packages" in app_worker_refusal(piped)  # starts as without one, never in the wrong env
    assert runtime_env_for(piped.image.to_runtime_env(), "torch", unit_key("ahead", "tokenize", "ab" * 32)) == {
        "pip": ["numpy"]
    }
    assert "secrets" in app_worker_refusal(function.model_copy(update={"secrets": ["hf"]}))
    assert app_worker_refusal(function) is None
    with pytest.raises(raygpu.InvalidSpecError, match="enable_memory_snapshot goes on functions and classes"):
        app.vllm("chat", model="/models/x", enable_memory_snapshot=True)


def test_a_deployment_takes_its_app_env_while_a_node_holds_a_worker_and_switches_only_at_rest():
    from autoscaling.parking import QuietReport
    from deployments.node.app_workers import (
        HELD_FRESH_S,
        HELD_RELEASE_S,
        SWITCH_QUIET_S,
        app_env_switches,
        env_switch_due,
        uses_app_env,
    )

    now = 10_000.0
    assert not uses_app_env(now, None, False) and not uses_app_env(now, None, True)  # never held
    assert uses_app_env(now, now - 1, False)  # a node reported holding it just now
    assert not uses_app_env(now, now - HELD_FRESH_S - 1, False)  # an old report does not switch to it
    # once in it, a worker taken by a replica (its replacement loading) keeps it for a while
    assert uses_app_env(now, now - HELD_FRESH_S - 1, True)
    assert not uses_app_env(now, now - HELD_RELEASE_S - 1, True)

    rest = QuietReport(since=now - SWITCH_QUIET_S - 1)
    assert env_switch_due(now, rest, 20.0)
    assert not env_switch_due(now, None, 20.0)  # busy (or not reported at rest)
    assert not env_switch_due(now, QuietReport(since=now - 1), 20.0)  # just came to rest
    assert not env_switch_due(now, QuietReport(since=rest.since, wake_at=now + 5), 20.0)  # pre-warm near
    assert env_switch_due(now, QuietReport(since=rest.since, wake_at=now + 60), 20.0)

    units = {"A": "app/A/1", "B": "app/B/1", "C": "app/C/1", "D": "app/D/1"}
    held = {"app/A/1": now - 1, "app/C/1": now - 1, "app/D/1": now - HELD_RELEASE_S - 5}
    reports = {"A": rest, "B": rest, "C": None, "D": rest}
    # A: held, at rest -> switches to its app env; B: never held, torch already; C: held but busy;
    # D: in its app env, no worker held for long -> back to torch
    assert app_env_switches(now, units, {"D"}, held, reports, 20.0) == {"A", "D"}
    assert app_env_switches(now, units, {"A", "C"}, held, reports, 20.0) == set()


def test_the_store_keeps_which_units_nodes_hold_admin_only(tmp_path):
    import asyncio
    import hashlib

    from deployments.store.actor import ControlPlaneStore

    async def scenario() -> None:
        store = ControlPlaneStore(str(tmp_path / "state.db"), hashlib.sha256(b"k").hexdigest())
        for wrong in ("wrong", None, ""):
            with pytest.raises(PermissionError):
                await store.report_app_workers(wrong, ["a/A/1"])
        with pytest.raises(ValueError, match="list of at most"):
            await store.report_app_workers("k", "a/A/1")
        assert await store.held_app_units() == {}
        assert await store.report_app_workers("k", ["a/A/1", "not-a-key", 7]) == 1
        assert set(await store.held_app_units()) == {"a/A/1"}

    asyncio.run(scenario())


def test_a_nodes_memory_keeps_the_most_recently_called_units():
    units = [
        AppUnit("a/A/1", last_called=100.0, rss_bytes=300 * MiB),
        AppUnit("b/B/1", last_called=300.0, rss_bytes=300 * MiB),
        AppUnit("c/C/1", last_called=200.0, rss_bytes=300 * MiB),
        AppUnit("d/D/1", last_called=50.0),  # not measured yet: counted at the estimate
    ]
    assert units_that_fit(units, 700 * MiB) == ["b/B/1", "c/C/1"]
    assert units_that_fit(units, 300 * MiB + ESTIMATED_WORKER_BYTES) == ["b/B/1", "c/C/1"]
    # one that does not fit leaves room for a smaller, less recently called one
    big = [AppUnit("b/B/1", 300.0, 600 * MiB), AppUnit("c/C/1", 200.0, 600 * MiB), AppUnit("a/A/1", 100.0, 100 * MiB)]
    assert units_that_fit(big, 750 * MiB) == ["b/B/1", "a/A/1"]
    assert units_that_fit(units, 10**12) == ["b/B/1", "c/C/1", "a/A/1", "d/D/1"]
    assert units_that_fit(units, 0) == []


def test_cuda_is_refused_within_the_guard_naming_what_tried():
    import torch

    with pytest.raises(CudaBeforeGpuError, match="the snap=True enter hook Embedder.load initialised CUDA"):
        with cuda_blocked("the snap=True enter hook Embedder.load"):
            torch.zeros(1, device="cuda")
    assert torch.zeros(2).sum().item() == 0.0  # the CPU is untouched
    lazy = torch.cuda._lazy_init
    with cuda_blocked("x"):
        pass
    assert torch.cuda._lazy_init is lazy  # restored after the block


def test_a_snap_hook_that_initialises_cuda_is_refused_in_the_guard():
    import torch

    app = raygpu.App("cudasnap")

    @app.cls()
    class Greedy:
        @raygpu.enter(snap=True)
        def load(self):
            self.weights = torch.ones(2).to("cuda")

        @raygpu.method()
        def go(self) -> int:
            return 1

    with pytest.raises(CudaBeforeGpuError, match="Greedy.load initialised CUDA"):
        run_snap_hooks(Greedy.__new__(Greedy), guard=cuda_blocked)


HOLD_SCRIPT = """
import json, os, sys
from deployments.node import warm_preload
results = {}
for key in sys.argv[1:]:
    os.environ["RAYGPU_WARM_UNIT"] = key
    warm_preload.HELD.clear()
    ok = warm_preload._hold_app()
    held = warm_preload.HELD
    instance = held.get("instance")
    results[key] = {
        "ok": ok,
        "code": "code" in held,
        "instance": instance is not None,
        "loaded": getattr(instance, "loaded", None),
        "error": held.get("error"),
    }
print(json.dumps(results))
"""


def test_a_worker_holds_a_functions_code_and_a_snap_classs_instance_and_refuses_cuda(tmp_path):
    """warm_preload._hold_app in a process of its own (its parent's code dir, as a raylet's worker)."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import cloudpickle

    from deployments import constants
    from deployments.node.app_workers import env_file_name, node_code_dir

    app = raygpu.App("holding")

    @app.function(enable_memory_snapshot=True)
    def plain(x: int) -> int:
        return x

    @app.cls()
    class Snapped:
        @raygpu.enter(snap=True)
        def load(self):
            self.loaded = os.environ.get("HOLD_MODE", "?")

        @raygpu.method()
        def go(self) -> str:
            return self.loaded

    @app.cls()
    class Cuda:
        @raygpu.enter(snap=True)
        def load(self):
            import torch

            torch.cuda.init()

        @raygpu.method()
        def go(self) -> int:
            return 1

    folder = node_code_dir(constants.WARM_APPS_DIR, os.getpid())
    os.makedirs(folder, exist_ok=True)
    keys = {name: unit_key("holding", name, "ab" * 32) for name in ("plain", "Snapped", "Cuda", "missing")}
    try:
        for name in ("plain", "Snapped", "Cuda"):
            code = app.units[name][1]  # as a deploy ships it
            with open(os.path.join(folder, payload_file_name(keys[name])), "wb") as f:
                f.write(cloudpickle.dumps(code))
            with open(os.path.join(folder, env_file_name(keys[name])), "w") as f:
                json.dump({"HOLD_MODE": "ahead"}, f)
        env = {k: v for k, v in os.environ.items() if k not in ("RAYGPU_WARM_WORKER", "RAYGPU_WARM_UNIT")}
        out = subprocess.run(
            [sys.executable, "-c", HOLD_SCRIPT, *keys.values()], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr
        held = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert held[keys["plain"]] == {"ok": True, "code": True, "instance": False, "loaded": None, "error": None}
    assert held[keys["Snapped"]]["ok"] and held[keys["Snapped"]]["loaded"] == "ahead"  # the image env was set
    cuda = held[keys["Cuda"]]
    assert not cuda["ok"] and "initialised CUDA" in cuda["error"] and "Cuda.load" in cuda["error"]
    assert held[keys["missing"]]["error"] == "no code for this unit on the node"
