"""Warm workers that hold an app: which units get them, the runtime env a unit's replicas and its
warm workers share (Ray hands an idle worker only to an actor with an identical runtime env), the
file a worker loads the unit's code from, and which units' workers fit a node's memory. Pure: no Ray.

A class with `@raygpu.enter(snap=True)` hooks gets them: a warm worker imports its module and runs
those hooks before any call arrives, and the replica that lands on it adopts the instance. A
function or class with `enable_memory_snapshot=True` gets them too: the worker loads its code (the
imports it needs) and the replica adopts that. Its
deployment takes that runtime env only while a node holds such a worker (`uses_app_env`): without
one, a replica in the unit's own env would start a process of its own, where the generic torch
warm worker it takes otherwise has torch imported already.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from autoscaling.parking import QuietReport
from deployments.spec import DeployedFunction, FunctionSpec

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


def runs_ahead(spec: FunctionSpec) -> bool:
    """Whether a unit asks for its code loaded ahead: a class with `snap=True` enter hooks, or a
    function or class with `enable_memory_snapshot=True` (only those kinds may set it)."""
    return bool(spec.snap_hooks) or spec.enable_memory_snapshot


def app_worker_refusal(spec: FunctionSpec) -> str | None:
    """Why a unit that asks for app-warm workers gets none (its replicas start as without them);
    None when it gets them."""
    if spec.min_containers > 0:
        return "it keeps min_containers > 0: its replicas are up already"
    if spec.image.pip:
        return "its image installs pip packages, an environment of its own, which no warm worker has"
    if spec.secrets:
        return "it names secrets, whose values reach its replicas only"
    return None


def wants_app_worker(spec: FunctionSpec) -> bool:
    """Whether a unit's replicas take app-warm workers: it asks for them (`runs_ahead`), may scale to
    zero, runs in the cluster's own environment and names no secret (`app_worker_refusal`)."""
    return runs_ahead(spec) and app_worker_refusal(spec) is None


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


# A deployment takes its unit's runtime env once a node reported a worker holding the unit this
# recently (the pools report every 2 s), and gives it up once none did for this long: a replica took
# the worker and its replacement is still loading meanwhile (not worth two Serve updates).
HELD_FRESH_S = 6.0
HELD_RELEASE_S = 60.0
# An env is switched only for a function at rest this long with no pre-warm due within the lead: a
# replica starting while Serve takes the new options would be started again.
SWITCH_QUIET_S = 3.0


def app_units(app: str, functions: list[DeployedFunction]) -> dict[str, str]:
    """Function -> unit key, for the functions of a version whose replicas may take app-warm workers."""
    return {
        f.spec.name: unit_key(app, f.spec.name, f.digest) for f in functions if f.digest and wants_app_worker(f.spec)
    }


def held_now(now: float, units: dict[str, str], last_held: dict[str, float]) -> set[str]:
    """The functions (of `units`) a new deployment of which takes its app env: a node holds it now."""
    return {name for name, key in units.items() if uses_app_env(now, last_held.get(key), False)}


def uses_app_env(now: float, last_held_at: float | None, uses_now: bool) -> bool:
    """Whether a unit's deployment should run in its app-warm runtime env, given when a node last
    reported a worker holding it (None: never)."""
    if last_held_at is None:
        return False
    return now - last_held_at <= (HELD_RELEASE_S if uses_now else HELD_FRESH_S)


def env_switch_due(now: float, report: QuietReport | None, lead_s: float) -> bool:
    """Whether a function's deployment may change its runtime env now: at rest at zero for
    SWITCH_QUIET_S, its next pre-warm (if any) not within `lead_s`."""
    if report is None or now - report.since < SWITCH_QUIET_S:
        return False
    return report.wake_at is None or report.wake_at - now > lead_s


def app_env_switches(
    now: float,
    units: dict[str, str],
    using: set[str],
    last_held: dict[str, float],
    reports: dict[str, QuietReport | None],
    lead_s: float,
) -> set[str]:
    """The functions (of `units`: function -> unit key) whose deployments change env now: those
    where `uses_app_env` differs from what they use (`using`) and a change is due."""
    changes = set()
    for name, key in units.items():
        wanted = uses_app_env(now, last_held.get(key), name in using)
        if wanted != (name in using) and env_switch_due(now, reports.get(name), lead_s):
            changes.add(name)
    return changes
