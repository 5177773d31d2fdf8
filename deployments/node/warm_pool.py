"""The warm worker pool: idle Ray worker processes with the replica code already imported, kept per
node and per flavour, on which new replicas land instead of starting a fresh Python process. A
flavour is what a replica needs imported: `torch` (torch, the torch and function replicas) or `vllm`
(also vLLM and its replica, and a warm vLLM engine-core process, deployments/engines/vllm_warm_core.py).

Everything here that touches Ray internals (the raylet's `PrestartWorkers` gRPC call, the worker
pool's matching by job and runtime env, `preload_python_modules`, idle workers titled `ray::IDLE`)
is in this module; `internals_available()` says whether the pinned Ray still has them, and when it
does not the pool stays empty and replicas start the ordinary way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from deployments import constants
from deployments.node.app_pool import AppWorkers, app_workers_on_node
from deployments.node.app_workers import APP_FLAVOUR, DEFAULT_WARM_MEMORY_SHARE
from deployments.node.occupancy import release_due, runs_replicas
from deployments.node.stage_sweep import remove_unheld_staged_models, sweep_staged_models
from deployments.node.warm_envs import (  # noqa: F401  (re-exported: where callers found them before)
    FLAVOURS,
    MAX_WORKERS_PER_FLAVOUR,
    PRELOAD_MODULE,
    WARM_ENV_VAR,
    apply_image_env,
    flavour_runtime_env,
    landed_warm,
    parse_pool_sizes,
    runtime_env_for,
)
from deployments.store.actor import get_store

logger = logging.getLogger(f"ray.serve.{__name__}")

IDLE_TITLE = "ray::IDLE"

KEEP_ALIVE_S = 3600
# a prestarted worker needs a few seconds (import torch) before it shows up as idle
PENDING_GRACE_S = 20.0
REFILL_INTERVAL_S = 2.0
# after a worker is taken, wait before starting its replacement so it does not compete for CPU
# with the replica that just took one
REFILL_DELAY_S = 5.0
# A vllm worker's replacement imports vLLM twice (the worker and its engine core): started while the
# replica that took the last one still starts its engine, it would take half of a small node's CPU.
REFILL_DELAY_BY_FLAVOUR_S = {"torch": REFILL_DELAY_S, "vllm": 60.0}
# A vllm worker shows up idle only once it and its engine core have imported vLLM.
PENDING_GRACE_BY_FLAVOUR_S = {"torch": PENDING_GRACE_S, "vllm": 300.0}


def system_config() -> dict[str, Any]:
    """What `ray start --system-config` needs for warm workers to preload the replica imports."""
    return {"preload_python_modules": [PRELOAD_MODULE]}


def internals_available() -> tuple[bool, str]:
    """Whether this Ray still has the internal pieces the pool relies on."""
    try:
        from ray.core.generated import node_manager_pb2, node_manager_pb2_grpc
        from ray.core.generated.common_pb2 import Language
    except ImportError as exc:
        return False, f"Ray's generated protocol modules moved ({exc})"
    fields = set(node_manager_pb2.PrestartWorkersRequest.DESCRIPTOR.fields_by_name)
    wanted = {"language", "job_id", "runtime_env_info", "keep_alive_duration_secs", "num_workers"}
    if not wanted <= fields:
        return False, f"PrestartWorkersRequest lacks {sorted(wanted - fields)}"
    if not hasattr(node_manager_pb2_grpc, "NodeManagerServiceStub") or "PYTHON" not in Language.keys():
        return False, "the raylet's gRPC stub changed"
    return True, ""


def _prestart(
    raylet_address: str, job_id_hex: str, count: int, flavour: str, runtime_env: dict[str, Any] | None = None
) -> None:
    """Ask the raylet for `count` idle workers of the Serve controller's job, with `flavour`'s runtime
    env (or `runtime_env`: an app unit's)."""
    import grpc
    from ray._private.utils import get_runtime_env_info
    from ray.core.generated import node_manager_pb2, node_manager_pb2_grpc
    from ray.core.generated.common_pb2 import Language
    from ray.runtime_env import RuntimeEnv

    env = runtime_env if runtime_env is not None else flavour_runtime_env(flavour)
    info = get_runtime_env_info(RuntimeEnv(**env), is_job_runtime_env=False, serialize=False)
    request = node_manager_pb2.PrestartWorkersRequest(
        language=Language.PYTHON,
        job_id=bytes.fromhex(job_id_hex),
        runtime_env_info=info,
        keep_alive_duration_secs=KEEP_ALIVE_S,
        num_workers=count,
    )
    with grpc.insecure_channel(raylet_address) as channel:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)


def _serve_controller_job() -> tuple[str | None, bool]:
    """Serve replicas run in the job of the Serve controller: warm workers must belong to it, and
    Ray pre-starts workers only for a job that is still running. Returns (job id, alive)."""
    for actor in ray._private.state.actors().values():
        if actor["ActorClassName"] == "ServeController" and actor["State"] == "ALIVE":
            job = actor["JobID"]
            dead = {j["JobID"] for j in ray._private.state.jobs() if j.get("IsDead")}
            return job, job not in dead
    return None, False


def _idle_warm_workers(session_dir: str, flavour: str | None = None) -> list[Any]:
    """This node's idle warm workers (of `flavour`, or of any) whose preload has finished (a worker
    still importing is not warm yet). Workers are children of their node's raylet, as is the pool
    actor itself."""
    import psutil

    raylet_pid = os.getppid()
    try:
        ready = set(os.listdir(constants.WARM_READY_DIR))
    except OSError:
        ready = set()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if not cmdline or not cmdline[0].startswith(IDLE_TITLE):
                continue
            kind = proc.environ().get(WARM_ENV_VAR)
            if kind not in FLAVOURS or (flavour is not None and kind != flavour) or str(proc.pid) not in ready:
                continue
            if proc.ppid() != raylet_pid:  # another node's worker (several raylets share a machine)
                continue
            found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _forget_exited_markers() -> None:
    import psutil

    try:
        for name in os.listdir(constants.WARM_READY_DIR):
            pid = name.split(".")[0]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                os.unlink(os.path.join(constants.WARM_READY_DIR, name))
    except OSError:
        pass


@dataclass(frozen=True)
class RefillPlan:
    """What the pool does after one look at its node: how many workers to pre-start now, and
    the prestarts still worth waiting for (when each was asked for)."""

    start: int
    pending: list[float]


def plan_refill(
    size: int,
    idle: int,
    pending: list[float],
    taken_at: float,
    now: float,
    delay_s: float = REFILL_DELAY_S,
    grace_s: float = PENDING_GRACE_S,
) -> RefillPlan:
    """Pre-start the workers missing from `size`, counting prestarts asked for within the last
    PENDING_GRACE_S as on their way, and none within `delay_s` after a replica took a
    worker (a replacement would compete for CPU with the replica that just started)."""
    waiting = [t for t in pending if now - t < grace_s][: max(0, size - idle)]
    missing = size - idle - len(waiting)
    if missing <= 0 or now - taken_at < delay_s:
        return RefillPlan(0, waiting)
    return RefillPlan(missing, waiting)


@dataclass
class FlavourPool:
    """One flavour's part of a node's pool."""

    size: int
    pending: list[float] = field(default_factory=list)  # when each not-yet-idle prestart was asked for
    taken_at: float = 0.0
    started: int = 0
    idle: list[Any] = field(default_factory=list)


def probe_cpu_kernels() -> None:
    """Find once per node, ahead of any vLLM replica, which CPU kernels a process here can run
    (deployments.engines.cpu_caps): a replica then reads the answer instead of probing."""
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        return
    try:
        from deployments.engines.cpu_caps import host_caps

        host_caps()
    except Exception as exc:
        logger.warning("raygpu warm pool: CPU kernel probe failed (%s)", exc)


class WarmPool:
    """Keeps `sizes[flavour]` idle warm workers of each flavour on its node, refilled after replicas
    take them. On a node other than the head (`release_when_unused`), it leaves once the node runs
    no replica."""

    def __init__(
        self,
        sizes: dict[str, int] | int,
        release_when_unused: bool = False,
        credential: str | None = None,
        warm_memory: int | None = None,
    ):
        self.flavours = {name: FlavourPool(count) for name, count in parse_pool_sizes(sizes).items()}
        self.release_when_unused = release_when_unused
        self.last_busy = time.time()
        self.node_id = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n["NodeID"] == self.node_id)
        self.raylet = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
        self.resources = dict(node["Resources"])
        self.apps = AppWorkers(credential, app_memory_budget(warm_memory))
        self.session_dir = ray._private.worker._global_node.get_session_dir_path()
        self.available, self.reason = internals_available()
        self.errors = 0
        self.last_error = ""
        self._job: str | None = None
        self._task = asyncio.get_event_loop().create_task(self._keep_filled()) if self.available else None
        self._stage_sweeper = asyncio.get_event_loop().create_task(sweep_staged_models())
        threading.Thread(target=probe_cpu_kernels, name="raygpu-cpu-probe", daemon=True).start()
        if not self.available:
            logger.warning("raygpu warm pool disabled: %s", self.reason)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.flavours.values())

    async def _keep_filled(self) -> None:
        while True:
            if self.release_when_unused and await self._release_if_unused():
                return
            try:
                await self.refill()
                if self.apps.credential and await self._find_job():
                    await self.apps.refill(
                        get_store(), self.resources, not self.release_when_unused, self._prestart_app
                    )
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("raygpu warm pool: refill failed (%s)", self.last_error)
            await asyncio.sleep(REFILL_INTERVAL_S)

    async def _prestart_app(self, runtime_env: dict[str, Any]) -> None:
        assert self._job is not None
        await asyncio.get_running_loop().run_in_executor(
            None, _prestart, self.raylet, self._job, 1, APP_FLAVOUR, runtime_env
        )

    async def use_app_workers(self, credential: str | None, warm_memory: int | None) -> None:
        """Keep warm workers that hold apps (with the credential that reads their code), within
        `warm_memory` bytes (None: a quarter of the node's memory)."""
        self.apps.credential = credential
        self.apps.budget_bytes = app_memory_budget(warm_memory)

    async def _release_if_unused(self) -> bool:
        loop = asyncio.get_running_loop()
        now = time.time()
        if await loop.run_in_executor(None, runs_replicas):
            self.last_busy = now
            return False
        if not release_due(False, self.last_busy, now):
            return False
        await remove_unheld_staged_models()  # nobody sweeps them after this pool
        held = await loop.run_in_executor(None, app_workers_on_node, os.getppid())
        for proc in await loop.run_in_executor(None, _idle_warm_workers, self.session_dir) + [
            p for procs in held.values() for p, _ in procs
        ]:
            try:
                proc.terminate()
            except Exception:
                pass
        logger.info("raygpu warm pool on node %s leaves: no replica runs there", self.node_id[:12])
        ray.actor.exit_actor()
        return True

    async def refill(self) -> int:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _forget_exited_markers)
        started = 0
        for name, flavour in self.flavours.items():
            idle = await loop.run_in_executor(None, _idle_warm_workers, self.session_dir, name)
            for proc in idle[flavour.size :]:  # the flavour was made smaller: its extra workers stop
                try:
                    proc.terminate()
                except Exception:
                    pass
            idle = idle[: flavour.size]
            now = time.time()
            if len(idle) < len(flavour.idle):
                flavour.taken_at = now
            flavour.idle = idle
            delay_s = REFILL_DELAY_BY_FLAVOUR_S.get(name, REFILL_DELAY_S)
            grace_s = PENDING_GRACE_BY_FLAVOUR_S.get(name, PENDING_GRACE_S)
            plan = plan_refill(flavour.size, len(idle), flavour.pending, flavour.taken_at, now, delay_s, grace_s)
            flavour.pending, missing = plan.pending, plan.start
            if missing <= 0 or not await self._find_job():
                continue
            try:
                await loop.run_in_executor(None, _prestart, self.raylet, self._job, missing, name)
            except Exception:
                self._job = None  # Serve may have restarted under a new job
                raise
            flavour.pending.extend([now] * missing)
            flavour.started += missing
            started += missing
        return started

    async def _find_job(self) -> bool:
        if self._job is not None:
            return True
        job, alive = await asyncio.get_running_loop().run_in_executor(None, _serve_controller_job)
        if job is None:
            return False  # Serve not up yet
        if not alive:
            self.reason = (
                f"Serve's controller belongs to job {job}, which has ended: start Serve from a "
                "long-lived driver (`raygpu up --local` does) for warm workers"
            )
            return False
        self._job, self.reason = job, ""
        return True

    async def stats(self) -> dict[str, Any]:
        flavours = {}
        for name, flavour in self.flavours.items():
            idle = []
            for proc in flavour.idle:
                try:
                    idle.append({"pid": proc.pid, "rss_bytes": proc.memory_info().rss})
                except Exception:
                    continue
            flavours[name] = {
                "size": flavour.size,
                "idle": idle,
                "idle_rss_bytes": sum(w["rss_bytes"] for w in idle),
                "pending": len(flavour.pending),
                "started": flavour.started,
            }
        return {
            "node_id": self.node_id,
            "head": not self.release_when_unused,
            "size": self.size,
            "available": self.available,
            "reason": self.reason,
            "flavours": flavours,
            "idle": [w for f in flavours.values() for w in f["idle"]],
            "idle_rss_bytes": sum(f["idle_rss_bytes"] for f in flavours.values()),
            "pending": sum(f["pending"] for f in flavours.values()),
            "started": sum(f["started"] for f in flavours.values()),
            "errors": self.errors,
            "last_error": self.last_error,
            "apps": self.apps.stats(),
        }

    async def resize(self, sizes: dict[str, int] | int) -> dict[str, int]:
        """New sizes for the flavours named; idle workers beyond a smaller size are stopped."""
        for name, count in parse_pool_sizes(sizes).items():
            flavour = self.flavours.setdefault(name, FlavourPool(count))
            flavour.size = count
            for proc in flavour.idle[count:]:
                try:
                    proc.terminate()
                except Exception:
                    pass
            flavour.idle = flavour.idle[:count]
        return {name: f.size for name, f in self.flavours.items()}


def pool_actor_name(node_id: str) -> str:
    return f"{constants.WARM_POOL_ACTOR_PREFIX}{node_id}"


def _is_head(node: dict[str, Any]) -> bool:
    return "node:__internal_head__" in node.get("Resources", {})


def app_memory_budget(warm_memory: int | None) -> int:
    """Bytes this node's app-holding warm workers may take: `warm_memory`, else a share of its memory."""
    import psutil

    if warm_memory is not None:
        return int(warm_memory)
    return int(psutil.virtual_memory().total * DEFAULT_WARM_MEMORY_SHARE)


def start_warm_pools(
    size: dict[str, int] | int, credential: str | None = None, warm_memory: int | None = None
) -> list[str]:
    """A warm pool of `size` workers (per flavour) on the head when it has GPUs, or on the first node of a
    cluster without any (`raygpu up`); GPU worker nodes get theirs from `start_pools_on` once a
    replica runs there. Returns the node ids covered."""
    nodes = [n for n in ray.nodes() if n["Alive"]]
    heads = [n for n in nodes if _is_head(n) and n["Resources"].get("GPU", 0) > 0]
    if not any(n["Resources"].get("GPU", 0) > 0 for n in nodes):
        heads = nodes[:1]
    return _start_pools(size, heads, credential, warm_memory)


def nodes_without_pool() -> list[str]:
    """Alive GPU worker nodes (not the head) that have no warm pool now: just launched, restarted,
    or their pool left when their last replica did."""
    missing = []
    for node in ray.nodes():
        if not node["Alive"] or _is_head(node) or node["Resources"].get("GPU", 0) <= 0:
            continue
        try:
            ray.get_actor(pool_actor_name(node["NodeID"]), namespace=constants.RAY_NAMESPACE)
        except ValueError:
            missing.append(node["NodeID"])
    return missing


def start_pools_on(
    size: dict[str, int] | int, node_ids: set[str], credential: str | None = None, warm_memory: int | None = None
) -> list[str]:
    """A warm pool on each of these alive nodes (the control-plane driver passes the GPU worker
    nodes without one that run replicas)."""
    nodes = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] in node_ids]
    return _start_pools(size, nodes, credential, warm_memory)


def _start_pools(
    size: dict[str, int] | int, nodes: list[dict[str, Any]], credential: str | None, warm_memory: int | None
) -> list[str]:
    handles = {}
    for node in nodes:
        handles[node["NodeID"]] = (
            ray.remote(WarmPool)
            .options(
                name=pool_actor_name(node["NodeID"]),
                namespace=constants.RAY_NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=-1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False),
            )
            .remote(size, not _is_head(node), credential, warm_memory)
        )
    covered = []
    for node_id, handle in handles.items():
        try:
            ray.get(handle.resize.remote(size), timeout=60)
            ray.get(handle.use_app_workers.remote(credential, warm_memory), timeout=60)
            covered.append(node_id)
        except Exception as exc:  # the node (or its pool) went away meanwhile: tried again next round
            logger.warning("raygpu warm pool on node %s did not start: %s", node_id[:12], exc)
    return covered


def pool_stats() -> list[dict[str, Any]]:
    out = []
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        try:
            actor = ray.get_actor(pool_actor_name(node["NodeID"]), namespace=constants.RAY_NAMESPACE)
        except ValueError:
            continue
        out.append(ray.get(actor.stats.remote(), timeout=10))
    return out


def replica_start_time(replica_init: float) -> float:
    """When this replica's start began: its worker process start, or, on a warm worker that idled
    in the pool before, the replica's own construction (pool time is not the replica's)."""
    from billing.client import process_start_time

    return replica_init if landed_warm(replica_init) else process_start_time()
