"""Warm workers that hold an app: which units get them, the runtime env a unit's replicas and its
warm workers share (Ray hands an idle worker only to an actor with an identical runtime env), the
file a worker loads the unit's code from, and which units' workers fit a node's memory. Pure: no Ray.

A class with `@raygpu.enter(snap=True)` hooks gets them: a warm worker imports its module and runs
those hooks before any call arrives, and the replica that lands on it adopts the instance.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from deployments.spec import FunctionSpec

APP_FLAVOUR = "app"
# the unit (app/unit/code digest) a warm worker holds; part of its runtime env and its replicas'
WARM_UNIT_ENV = "RAYGPU_WARM_UNIT"
# An app's warm workers may take this share of a node's memory (`raygpu up --warm-memory`).
DEFAULT_WARM_MEMORY_SHARE = 0.25
# A unit's worker is counted at this resident size until one of its workers was measured.
ESTIMATED_WORKER_BYTES = 512 * 2**20


def unit_key(app: str, unit: str, digest: str) -> str:
    """What names one unit's code: a new version of its code (another digest) is another key."""
    return f"{app}/{unit}/{digest[:16]}"


def payload_file_name(key: str) -> str:
    """The node-private file holding a unit's pickled code for its warm workers."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".pkl"


def env_file_name(key: str) -> str:
    """The file beside a unit's code holding its image's environment variables (set before it loads)."""
    return payload_file_name(key).removesuffix(".pkl") + ".env.json"


def node_code_dir(root: str, raylet_pid: int) -> str:
    """Where one node's pool keeps its units' code: apart per raylet (several raylets may share a
    machine); the pool and its workers are children of that raylet."""
    return os.path.join(root, str(raylet_pid))


def wants_app_worker(spec: FunctionSpec) -> bool:
    """Whether a unit's replicas take app-warm workers: a class with `snap=True` enter hooks that may
    scale to zero, in the cluster's own environment (an image that installs pip packages runs in an
    environment of its own, which starts as without warm workers), naming no secret (their values
    reach replicas only, fetched at start)."""
    return (
        spec.kind == "class"
        and bool(spec.snap_hooks)
        and spec.min_containers == 0
        and not spec.image.pip
        and not spec.secrets
    )


@dataclass(frozen=True)
class AppUnit:
    """A unit a node may keep a warm worker for: when it was last called, and its worker's resident
    memory when one was measured."""

    key: str
    last_called: float
    rss_bytes: int | None = None


def units_that_fit(units: list[AppUnit], budget_bytes: int) -> list[str]:
    """The units whose warm workers a node keeps: the most recently called first, while their
    resident memory (measured, else ESTIMATED_WORKER_BYTES) fits the budget; the least recently
    called go first when it does not."""
    kept, used = [], 0
    for unit in sorted(units, key=lambda u: (-u.last_called, u.key)):
        size = unit.rss_bytes if unit.rss_bytes is not None else ESTIMATED_WORKER_BYTES
        if used + size <= budget_bytes:
            kept.append(unit.key)
            used += size
    return kept
