"""A node's warm workers that hold an app unit (deployments/node/app_workers.py): one idle worker per
live unit that gets them and that this node can run, its code written where the worker loads it, its
`snap=True` hooks run before any call. A unit's first worker starts while its function is at rest
(not beside a replica's start, which it would slow), its replacement shortly after a replica took
one. Within the node's warm-memory budget, the least recently called units' workers go first; a
worker of code no live version runs any more (a new deploy, a stopped app) is stopped; a unit whose
worker failed to hold it (a module that needs CUDA at import, a hook that raised) gets no more
workers until its code changes, and the reason is kept."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from deployments import constants
from deployments.node.app_workers import (
    APP_FLAVOUR,
    WARM_UNIT_ENV,
    AppUnit,
    env_file_name,
    node_code_dir,
    payload_file_name,
    unit_key,
    units_that_fit,
    wants_app_worker,
)
from deployments.node.warm_envs import WARM_ENV_VAR, app_runtime_env
from deployments.spec import DeployedFunction

logger = logging.getLogger(f"ray.serve.{__name__}")

IDLE_TITLE = "ray::IDLE"
# a worker asked for is on its way this long (it imports torch and the app, and runs the hooks)
PENDING_GRACE_S = 300.0
# after a replica took a unit's worker, its replacement waits this long (not to compete for CPU)
REFILL_DELAY_S = 5.0
# a unit's first worker starts once its function has been at rest at zero this long
FIRST_WORKER_REST_S = 5.0
LAST_CALLS_WINDOW_S = 7 * 24 * 3600.0


@dataclass
class LiveUnit:
    key: str
    app: str
    function: str
    version: int
    live_at: float
    env: dict[str, str]  # its image's environment variables


def node_runs(spec: Any, accelerator: str | None, resources: dict[str, float]) -> bool:
    """Whether a node with these total resources can run the unit's replicas."""
    request = spec.gpu_request
    if request is None:
        return resources.get("CPU", 0) >= spec.cpu
    if resources.get("GPU", 0) < request.count:
        return False
    wanted = [accelerator] if accelerator else request.types
    return not wanted or any(f"accelerator_type:{t}" in resources for t in wanted)


# A worker's state: it holds its unit, it failed to, or it is starting (holding, or a worker Ray just
# started for a replica of the unit: never stopped, whatever its unit).
READY, FAILED, STARTING = "ready", "failed", "starting"


def app_workers_on_node(raylet_pid: int) -> dict[str, list[tuple[Any, str]]]:
    """This node's idle app workers by unit key, each with its state."""
    import psutil

    try:
        markers = set(os.listdir(constants.WARM_READY_DIR))
    except OSError:
        markers = set()
    found: dict[str, list[tuple[Any, str]]] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if not cmdline or not cmdline[0].startswith(IDLE_TITLE) or proc.ppid() != raylet_pid:
                continue
            env = proc.environ()
            if env.get(WARM_ENV_VAR) != APP_FLAVOUR or not env.get(WARM_UNIT_ENV):
                continue
            pid = str(proc.pid)
            state = READY if pid in markers else FAILED if f"{pid}.failed" in markers else STARTING
            found.setdefault(env[WARM_UNIT_ENV], []).append((proc, state))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _write_private(path: Any, data: bytes) -> None:
    """Write a file only this user can read, in one step (a reader never sees half of it)."""
    partial = f"{path}.part"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def _stop(workers: list[tuple[Any, str]]) -> int:
    """Stop the workers that hold their unit or failed to; never one still starting (it may be the
    worker Ray started for a replica). Returns how many."""
    stopped = 0
    for proc, state in workers:
        if state == STARTING:
            continue
        try:
            proc.terminate()
            stopped += 1
        except Exception:
            pass
    return stopped


class AppWorkers:
    """The app part of one node's warm pool (deployments/node/warm_pool.py runs `refill`)."""

    def __init__(self, credential: str | None, budget_bytes: int):
        self.credential = credential
        self.budget_bytes = budget_bytes
        self.reasons: dict[str, str] = {}  # unit key -> why it gets no warm worker
        self.pending: dict[str, float] = {}  # unit key -> when its worker was asked for
        self.taken_at: dict[str, float] = {}
        self.rss: dict[str, int] = {}  # unit key -> its worker's resident memory, as last measured
        self.workers: dict[str, list[tuple[Any, str]]] = {}
        self.units: dict[str, LiveUnit] = {}
        self._generation = -1  # the routing table's generation `units` was read at
        self.kept: list[str] = []
        self.started = 0
        self.evicted = 0

    async def refill(
        self,
        store: Any,
        resources: dict[str, float],
        head: bool,
        prestart: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        """One look: the live units this node keeps workers for, their code on disk, workers stopped
        (retired code, over budget, failed) and asked for (missing)."""
        if not self.credential:
            return
        loop = asyncio.get_running_loop()
        self.units = await self._live_units(store, resources, head)
        await self._write_code(store)
        before = self.workers
        self.workers = await loop.run_in_executor(None, app_workers_on_node, os.getppid())
        now = time.time()
        for key, procs in before.items():
            if procs and not self.workers.get(key):  # a replica took it
                self.taken_at[key] = now
        for key in list(self.workers):
            if key not in self.units:  # code no live version runs
                _stop(self.workers.pop(key))
        await loop.run_in_executor(None, self._read_failures)
        for key, procs in self.workers.items():
            self.pending.pop(key, None)  # it showed up
            if key in self.reasons:
                _stop(procs)
                continue
            held = [p for p, state in procs if state == READY]
            if held:
                try:
                    self.rss[key] = held[0].memory_info().rss
                except Exception:
                    pass
        last_calls = await store.last_arrivals.remote(now - LAST_CALLS_WINDOW_S)
        candidates = [
            AppUnit(key, max(last_calls.get(f"{u.app}/{u.function}", 0.0), u.live_at), self.rss.get(key))
            for key, u in self.units.items()
            if key not in self.reasons
        ]
        self.kept = units_that_fit(candidates, self.budget_bytes)
        for unit in candidates:
            if unit.key not in self.kept:
                self.evicted += _stop(self.workers.pop(unit.key, []))
        held = self.held_keys()
        if held:  # the parker gives a unit's deployment its app env while some node holds a worker of it
            await store.report_app_workers.remote(self.credential, sorted(held))
        missing = [k for k in self.kept if not self.workers.get(k)]
        at_rest = await store.quiet_functions.remote() if missing else {}
        for key in missing:
            asked = self.pending.get(key)
            if asked is not None and now - asked < PENDING_GRACE_S:
                continue  # on its way
            if now - self.taken_at.get(key, 0.0) < REFILL_DELAY_S:
                continue  # not to compete for CPU with the replica that just took one
            unit = self.units[key]
            rest = at_rest.get(f"{unit.app}/{unit.function}")
            if key not in self.taken_at and (not rest or now - rest[0] < FIRST_WORKER_REST_S):
                # its first worker waits for the function at rest (a replica of it starting on a
                # generic worker, as a call right after a deploy does, is not slowed by it)
                continue
            self.pending[key] = now
            self.started += 1
            await prestart(app_runtime_env(key))

    async def _live_units(self, store: Any, resources: dict[str, float], head: bool) -> dict[str, LiveUnit]:
        """The live units this node keeps workers for; read again only when the routing table moved."""
        generation = (await store.ping.remote())["generation"]
        if generation == self._generation:
            return self.units
        off_head = head and bool(await store.get_setting.remote("replicas_off_head", False))
        units: dict[str, LiveUnit] = {}
        for entry in await store.live_apps.remote():
            for raw in entry["functions"]:
                deployed = DeployedFunction.model_validate(raw)
                if not deployed.digest or not wants_app_worker(deployed.spec) or off_head:
                    continue
                if not node_runs(deployed.spec, deployed.accelerator, resources):
                    continue
                key = unit_key(entry["name"], deployed.spec.name, deployed.digest)
                units[key] = LiveUnit(
                    key,
                    entry["name"],
                    deployed.spec.name,
                    entry["version"],
                    entry["live_at"] or 0.0,
                    dict(deployed.spec.image.env),
                )
        self._generation = generation
        return units

    async def _write_code(self, store: Any) -> None:
        """The code of each unit kept, where its workers load it (written once per code digest)."""
        from deployments.engines.private_dirs import private_dir

        private_dir(constants.WARM_APPS_DIR)
        folder = private_dir(node_code_dir(constants.WARM_APPS_DIR, os.getppid()))
        wanted = {payload_file_name(k): (k, u) for k, u in self.units.items()}
        keep = set(wanted) | {env_file_name(k) for k in self.units} | {f"{n}.error" for n in wanted}
        for name in os.listdir(folder):
            if name not in keep:
                os.unlink(folder / name)
        for name, (key, unit) in wanted.items():
            path = folder / name
            if path.exists() and (folder / env_file_name(key)).exists():
                continue
            payloads = await store.version_payloads.remote(self.credential, unit.app, unit.version)
            if unit.function not in payloads:
                continue
            _write_private(folder / env_file_name(key), json.dumps(unit.env).encode())
            _write_private(path, payloads[unit.function])

    def _read_failures(self) -> None:
        for key in self.units:
            folder = node_code_dir(constants.WARM_APPS_DIR, os.getppid())
            error = os.path.join(folder, payload_file_name(key) + ".error")
            if key not in self.reasons and os.path.exists(error):
                with open(error) as f:
                    self.reasons[key] = f.read().strip() or "the warm worker could not hold the app"
                logger.warning("raygpu warm pool: no warm workers for %s: %s", key, self.reasons[key])

    def held_keys(self) -> set[str]:
        """The units an idle worker of this node holds now."""
        return {
            key
            for key, procs in self.workers.items()
            if key not in self.reasons and any(state == READY for _, state in procs)
        }

    def stats(self) -> dict[str, Any]:
        units = []
        for key, unit in self.units.items():
            idle = []
            for proc, state in self.workers.get(key, []):
                try:
                    idle.append({"pid": proc.pid, "rss_bytes": proc.memory_info().rss, "holds": state == READY})
                except Exception:
                    continue
            units.append(
                {
                    "unit": key,
                    "app": unit.app,
                    "function": unit.function,
                    "kept": key in self.kept,
                    "idle": idle,
                    "rss_bytes": sum(w["rss_bytes"] for w in idle),
                    "reason": self.reasons.get(key),
                }
            )
        return {
            "budget_bytes": self.budget_bytes,
            "used_bytes": sum(u["rss_bytes"] for u in units),
            "units": units,
            "started": self.started,
            "evicted": self.evicted,
        }
