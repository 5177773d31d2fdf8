"""The scheduler: one detached actor on the head that runs scheduled functions when they are due.

It follows the live versions (a deploy that changes or removes a schedule takes effect when its
version goes live; `raygpu stop` ends it), asks the store to record each due run as a spawned call
(at most one per due time, skipped when the previous run is still going or admission refuses) and
hands it to the call runner. It publishes each function's next due time: the autoscaling policy
starts a replica one measured start ahead of it. A restarted scheduler continues from the last due
time recorded; when to run is decided by deployments/schedules.py."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import ray

from deployments import constants
from deployments.calls.runner import RUNNER_ACTOR_NAME
from deployments.head_actors import start_head_actor
from deployments.schedules import CronSchedule, PeriodSchedule, plan_due
from deployments.spec import DeployedFunction
from deployments.store.actor import get_store

logger = logging.getLogger(__name__)

SCHEDULER_ACTOR_NAME = "raygpu-scheduler"
TICK_S = 0.5  # how often the live versions are looked at (a due time wakes the scheduler on time)
REPUBLISH_S = 10.0  # plans are published again this often (a restarted store has none)


@dataclass
class ScheduledFunction:
    app: str
    function: str
    version: int
    live_at: float
    schedule: CronSchedule | PeriodSchedule
    last_due: float | None
    next_due: float = 0.0


class Scheduler:
    def __init__(self, credential: str):
        self._credential = credential
        self.store = get_store()
        self.functions: dict[str, ScheduledFunction] = {}
        self.generation = -1
        self.runs_started = 0
        self.last_error: str | None = None
        self._published: dict[str, float] | None = None
        self._published_at = 0.0
        self._loop = asyncio.get_running_loop().create_task(self._run())

    async def ping(self) -> bool:
        return True

    async def state(self) -> dict[str, Any]:
        return {
            "functions": {key: {"next_due": f.next_due, "last_due": f.last_due} for key, f in self.functions.items()},
            "runs_started": self.runs_started,
            "last_error": self.last_error,
        }

    async def _run(self) -> None:
        while True:
            pause = TICK_S
            try:
                await self._follow_live_versions()
                await self._run_due(time.time())
                await self._publish()
                self.last_error = None
                soonest = min((f.next_due for f in self.functions.values()), default=float("inf"))
                pause = min(TICK_S, max(0.005, soonest - time.time()))
            except Exception as exc:
                self.last_error = str(exc)
                logger.warning("raygpu scheduler: pass failed (%s); retrying", exc)
                try:
                    self.store = get_store()
                except Exception:
                    pass
                self.generation = -1
            await asyncio.sleep(pause)

    async def _follow_live_versions(self) -> None:
        generation = (await self.store.ping.remote())["generation"]
        if generation == self.generation:
            return
        found: dict[str, ScheduledFunction] = {}
        for entry in await self.store.live_apps.remote():
            for raw in entry["functions"]:
                deployed = DeployedFunction.model_validate(raw)
                schedule = deployed.spec.schedule
                if schedule is None:
                    continue
                key = f"{entry['name']}/{deployed.spec.name}"
                known = self.functions.get(key)
                if (
                    known is not None
                    and known.version == entry["version"]
                    and known.schedule == schedule
                    and known.live_at == (entry["live_at"] or 0.0)
                ):
                    found[key] = known
                    continue
                last_due = await self.store.last_scheduled_due.remote(entry["name"], deployed.spec.name)
                function = ScheduledFunction(
                    entry["name"],
                    deployed.spec.name,
                    entry["version"],
                    entry["live_at"] or time.time(),
                    schedule,
                    last_due,
                )
                plan = plan_due(schedule, function.live_at, last_due, time.time())
                # a due time found late (a restarted scheduler) runs on the next pass
                function.next_due = plan.run_due if plan.run_due is not None else plan.next_due
                found[key] = function
        self.functions = found
        self.generation = generation

    async def _run_due(self, now: float) -> None:
        for key, function in list(self.functions.items()):
            if now < function.next_due:
                continue  # nothing of it is due before its next due time
            plan = plan_due(function.schedule, function.live_at, function.last_due, now)
            function.next_due = plan.next_due
            if plan.run_due is None:
                continue
            try:
                answer = await self.store.start_scheduled_run.remote(
                    self._credential, function.app, function.function, plan.run_due, "schedule"
                )
            except LookupError as exc:  # gone or unscheduled since the versions were read
                logger.info("raygpu scheduler: %s not run (%s)", key, exc)
                self.generation = -1
                continue
            function.last_due = plan.run_due
            run = answer["run"]
            if answer["new"]:
                self.runs_started += 1
                if run["call_id"]:
                    submit(run["call_id"])
                else:
                    logger.info("raygpu scheduler: %s run due at %.0f skipped: %s", key, plan.run_due, run["reason"])

    async def _publish(self) -> None:
        plans = {key: f.next_due for key, f in self.functions.items()}
        if plans == self._published and time.monotonic() - self._published_at < REPUBLISH_S:
            return
        await self.store.publish_schedule_plans.remote(self._credential, plans)
        self._published, self._published_at = plans, time.monotonic()


def submit(call_id: str) -> None:
    """Hand a recorded call to the call runner (its sweep finds the call when the runner is away)."""
    try:
        ray.get_actor(RUNNER_ACTOR_NAME, namespace=constants.RAY_NAMESPACE).submit.remote(call_id)
    except Exception as exc:
        logger.warning("raygpu: call runner unavailable (%s); call %s waits for its sweep", exc, call_id)


def start_scheduler(credential: str) -> Any:
    """Create the detached scheduler on the head node, or return the running one."""
    handle = start_head_actor(Scheduler, SCHEDULER_ACTOR_NAME, credential, max_concurrency=100)
    ray.get(handle.ping.remote())
    return handle
