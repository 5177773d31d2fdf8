"""Scheduled functions as the CLI sees them: their recent runs, and a run triggered now."""

from __future__ import annotations

import ray

from deployments.calls.scheduler import submit
from deployments.spec import DeployedFunction, live_unit
from raygpu.ops.contracts import ScheduledRunInfo
from raygpu.sdk.control import admin_call, store
from raygpu.sdk.errors import NotFoundError


def _scheduled(app: str, function: str) -> DeployedFunction:
    entry = ray.get(store().live_app.remote(app))
    if entry is None:
        raise NotFoundError(f"app {app!r} is not deployed; `raygpu ls` lists the deployed apps")
    deployed = live_unit(entry, function)
    if deployed is None:
        raise NotFoundError(f"app {app!r} has no function {function!r}; `raygpu status {app}` lists its functions")
    if deployed.spec.schedule is None:
        raise NotFoundError(
            f"{app}/{function} has no schedule; declare one with @app.function(schedule=raygpu.Period(...))"
        )
    return deployed


def schedule_runs(app: str, function: str, limit: int = 20) -> list[ScheduledRunInfo]:
    """The latest runs of a scheduled function, newest first."""
    _scheduled(app, function)
    return [ScheduledRunInfo(**run) for run in ray.get(store().schedule_runs.remote(app, function, limit))]


def run_now(app: str, function: str) -> ScheduledRunInfo:
    """Run a scheduled function now, outside its schedule: a run record like a scheduled one's."""
    _scheduled(app, function)
    try:
        answer = admin_call("start_scheduled_run", app, function, None, "manual")
    except LookupError as exc:
        raise NotFoundError(str(getattr(exc, "cause", None) or exc)) from None
    run = ScheduledRunInfo(**answer["run"])
    if run.call_id:
        submit(run.call_id)
    return run
