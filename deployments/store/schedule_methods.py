"""The store actor's schedule methods (a part of deployments.store.actor.ControlPlaneStore): a
scheduled function's runs recorded as spawned calls (at most one per due time; skipped, with the
reason, when the previous run is still going or admission refuses), the last due time handled,
and the plans the scheduler publishes for the autoscaling policies (next due time, run going)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from deployments.spec import DeployedFunction, live_unit
from deployments.store.db import StateDB

TRIGGERS = ("schedule", "manual")
MAX_RUNS_LISTED = 1000
EMPTY_ARGUMENTS = b"{}"
SCHEDULE_PLANS_SETTING = "schedule_plans"


class ScheduleMethods:
    """Scheduled runs over the store's StateDB (`self.db`), in the store actor's loop."""

    db: StateDB
    _check_admin: Callable[[Any], None]
    create_call: Callable[..., Any]

    def _init_schedules(self) -> None:
        # "app/function" -> next due time, as the scheduler last published them; kept in the
        # settings too, so that a restarted store has them before the scheduler publishes again
        # (the autoscaling policies pre-warm from them)
        saved = self.db.get_setting(SCHEDULE_PLANS_SETTING, {})
        self._schedule_plans: dict[str, float] = dict(saved) if isinstance(saved, dict) else {}

    def _live_function(self, app: str, function: str) -> tuple[int, DeployedFunction] | None:
        found = self.db.live_apps(app)
        deployed = live_unit(found[0] if found else None, function)
        return None if deployed is None else (int(found[0]["version"]), deployed)

    async def start_scheduled_run(
        self, credential: str, app: str, function: str, due_at: float | None, trigger: str = "schedule"
    ) -> dict[str, Any]:
        """Run `app/function` for `due_at` (trigger "schedule") or now ("manual", `due_at` None): its
        run record, made once per due time (`new`: False when it already was). The run is a spawned
        call with no arguments (the call runner takes it: `call_id`), or skipped with the reason.
        Raises LookupError when the function is not live (or, for the schedule, not scheduled)."""
        self._check_admin(credential)
        if trigger not in TRIGGERS or not isinstance(app, str) or not isinstance(function, str):
            raise ValueError(f"a run needs an app, a function and a trigger in {TRIGGERS}")
        if trigger == "schedule":
            if not isinstance(due_at, (int, float)) or not math.isfinite(due_at):
                raise ValueError("a scheduled run needs the due time it runs for")
            existing = self.db.scheduled_run(app, function, float(due_at))
            if existing is not None:
                return {"run": existing, "new": False}
        else:
            due_at = None
        live = self._live_function(app, function)
        if live is None:
            raise LookupError(f"{app}/{function} is not deployed; `raygpu status {app}` lists its functions")
        version, deployed = live
        if trigger == "schedule" and deployed.spec.schedule is None:
            raise LookupError(f"{app}/{function} has no schedule in its live version")
        now = time.time()
        skipped = None
        going = self.db.open_run(app, function) if trigger == "schedule" else None
        if going is not None:
            skipped = f"the previous run (call {going['call_id']}) was still going"
        call_id = None
        if skipped is None:
            created = await self.create_call(app, function, None, EMPTY_ARGUMENTS, None, deployed.spec.queue_bound)
            refused = created.get("refused")
            if refused is not None:
                reason = refused["message"] or "the function's queue was full"
                skipped = f"admission refused the run ({refused['status']} {refused['type']}: {reason})"
            else:
                call_id = created["record"]["call_id"]
        run = self.db.record_run(app, function, version, trigger, due_at, now, call_id, skipped)
        return {"run": run, "new": True}

    async def schedule_runs(self, app: str, function: str, limit: int = 20) -> list[dict[str, Any]]:
        """A function's latest runs, newest first (status from its call record)."""
        if not isinstance(app, str) or not isinstance(function, str) or not isinstance(limit, int):
            return []
        return self.db.runs(app, function, max(1, min(limit, MAX_RUNS_LISTED)))

    async def last_scheduled_due(self, app: str, function: str) -> float | None:
        """The latest due time of the function already handled (a restarted scheduler continues after it)."""
        return self.db.last_due(app, function)

    async def publish_schedule_plans(self, credential: str, plans: dict[str, float]) -> int:
        """The scheduler's next due time per "app/function" (all of them: what it omits has none)."""
        self._check_admin(credential)
        if not isinstance(plans, dict):
            raise ValueError("schedule plans map 'app/function' to the next due time")
        checked = {
            key: float(due)
            for key, due in plans.items()
            if isinstance(key, str) and key.count("/") == 1 and isinstance(due, (int, float)) and math.isfinite(due)
        }
        if checked != self._schedule_plans:
            self._schedule_plans = checked
            self.db.set_setting(SCHEDULE_PLANS_SETTING, checked)
        return len(checked)

    async def schedule_plans(self) -> dict[str, list[Any]]:
        """What the autoscaling policies warm for: "app/function" -> [next due time, a run going]."""
        if not self._schedule_plans:
            return {}
        going = self.db.functions_with_open_runs()
        return {key: [due, key in going] for key, due in self._schedule_plans.items()}

    async def schedule_summary(self, app: str, functions: list[str]) -> dict[str, dict[str, Any]]:
        """Per named function of `app`: its next due time as the scheduler published it (None before it
        has) and its last run (None before the first)."""
        out: dict[str, dict[str, Any]] = {}
        for function in functions if isinstance(app, str) and isinstance(functions, list) else []:
            if isinstance(function, str):
                runs = self.db.runs(app, function, 1)
                out[function] = {
                    "next_due": self._schedule_plans.get(f"{app}/{function}"),
                    "last_run": runs[0] if runs else None,
                }
        return out
