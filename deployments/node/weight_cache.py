"""The node-local weight cache: one detached actor per node holds each weights file, read once,
in Ray's shared-memory object store. Replicas on the node map the arrays without copying them,
so a second replica (or a replacement after a crash) never reads the file again.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from deployments import constants
from deployments.node.occupancy import OCCUPANCY_CHECK_S, on_head, release_due, runs_replicas
from deployments.weights_location import is_location, parse_location


def fingerprint(path: str | Path) -> str:
    """Which bytes a weights file holds: a blob's content address, else by path, size and
    modification time (no read needed)."""
    if isinstance(path, str) and is_location(path):
        location = parse_location(path)
        if location.kind == "blob" or not Path(location.path).is_file():
            return location.uri  # content-addressed, or shared storage this machine does not mount
        path = location.path
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {resolved} not found") from None
    if not resolved.is_file():
        raise FileNotFoundError(f"weights path {resolved} is not a file")
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"


class NodeWeightCache:
    """Weights files of this node, each a dict of numpy arrays in the object store, owned here so
    they outlive the replicas that asked for them."""

    def __init__(self, release_when_unused: bool = False) -> None:
        self.entries: dict[str, Any] = {}
        # On an autoscaled node the cache leaves once the node runs no replica (see occupancy).
        self.release_when_unused = release_when_unused
        self.last_busy = time.time()
        if release_when_unused:
            self._watch = asyncio.get_event_loop().create_task(self._leave_when_unused())
        self.sizes: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Keys of each model ("app/function/model"), oldest first: a model keeps its current and
        # previous weights here; older ones are dropped (replicas still mapping them keep them alive).
        self.versions: dict[str, list[str]] = {}
        self.evicted = 0

    async def _leave_when_unused(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(OCCUPANCY_CHECK_S)
            now = time.time()
            if await loop.run_in_executor(None, runs_replicas):
                self.last_busy = now
            elif release_due(False, self.last_busy, now):
                ray.actor.exit_actor()

    async def get(self, key: str, path: str, model: str | None = None) -> list[Any]:
        """[ObjectRef] of the weights with this fingerprint, reading `path` only on the first ask."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self.entries:
                shared = await asyncio.get_running_loop().run_in_executor(None, _read_shared, path)
                self.sizes[key] = sum(array.nbytes for array, _ in shared.values())
                self.entries[key] = ray.put(shared)
                del shared
                self.hits[key] = 0
            else:
                self.hits[key] += 1
            ref = self.entries[key]
            if model is not None:
                await self._keep_latest(model, key)
        return [ref]

    async def _keep_latest(self, model: str, key: str) -> None:
        keys = self.versions.setdefault(model, [])
        if key in keys:
            keys.remove(key)
        keys.append(key)
        while len(keys) > constants.WEIGHT_CACHE_VERSIONS_KEPT:
            old = keys.pop(0)
            if not any(old in other for other in self.versions.values()):
                await self.drop(old)
                self.evicted += 1

    async def drop(self, key: str) -> bool:
        self.hits.pop(key, None)
        self.sizes.pop(key, None)
        return self.entries.pop(key, None) is not None

    async def stats(self) -> dict[str, Any]:
        return {
            "entries": {k: {"bytes": self.sizes[k], "hits": self.hits[k]} for k in self.entries},
            "bytes": sum(self.sizes.values()),
            "evicted": self.evicted,
            "pid": os.getpid(),
        }


def _read_shared(path: str) -> Any:
    from deployments.engines.torch_engine import read_weights, to_shared

    return to_shared(read_weights(readable_path(path)))


def readable_path(path: str) -> str:
    """A file on this node holding the weights at `path`: a blob's local copy (fetched from the
    cluster's blob store on first use), a `file://` path in place, or a plain path (older versions)."""
    if not is_location(path):
        return path
    location = parse_location(path)
    if location.kind == "blob":
        from deployments.node.blobs import local_copy

        return str(local_copy(location.path))
    return location.path


def node_weight_cache(node_id: str | None = None) -> Any:
    """The weight cache actor of a node (this one by default), started on first use."""
    node_id = node_id or ray.get_runtime_context().get_node_id()
    release_when_unused = not on_head(node_id)
    return (
        ray.remote(NodeWeightCache)
        .options(
            name=f"{constants.WEIGHT_CACHE_ACTOR_PREFIX}{node_id}",
            namespace=constants.RAY_NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=64,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        )
        .remote(release_when_unused)
    )


async def load_cached(key: str, path: str, model: str | None = None) -> tuple[Any, float]:
    """The shared weights for `key` through this node's cache, and the seconds it took. `model`
    ("app/function/model") lets the cache drop that model's superseded weights."""
    started = time.perf_counter()

    async def fetch() -> Any:
        (ref,) = await node_weight_cache().get.remote(key, path, model)
        return await ref

    try:
        shared = await fetch()
    except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError):
        shared = await fetch()  # the cache left (its node had run no replica) as this one asked: a new one
    return shared, time.perf_counter() - started
