"""What every raygpu replica does around its own work: start (timed by phase, a failure kept as
the answer to every call instead of a crash loop), meter its lifecycle and each call, find what
triggered its start, and report its load to the autoscaler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray
from pydantic_core import to_jsonable_python

from billing.client import MeterClient
from billing.node_inventory import node_started_at
from deployments import constants
from deployments.calls.context import CallContext
from deployments.node.warm_pool import apply_image_env, replica_start_time
from deployments.replicas.start_phases import StartPhases, start_trigger
from deployments.spec import FunctionSpec
from deployments.store.actor import get_store

logger = logging.getLogger(f"ray.serve.{__name__}")
# Pauses between lookups of the scale-up behind a start (it may be recorded just after the start).
TRIGGER_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)


def error_payload(error_type: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of an error answer: `{"error": {"type", "message"[, "details"]}}`."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def _jsonable_fallback(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-serializable")


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types (pydantic models, dataclasses, numpy and torch values included);
    TypeError or ValueError when it has no JSON form."""
    return to_jsonable_python(value, fallback=_jsonable_fallback)


def encode_json(payload: Any) -> bytes:
    return json.dumps(jsonable(payload), separators=(",", ":"), allow_nan=False).encode()


@dataclass
class CallOutcome:
    """What a metered call answered: set by the call, read when it ends."""

    status: int = 500
    bytes_out: int = 0


class ReplicaBase:
    """Base of every replica class. Serve constructs it with the unit's app, version, spec (JSON),
    code payload (pickled), accelerator and whether it is metered; subclasses load their unit in
    `_load`."""

    async def __init__(
        self,
        app: str,
        version: int,
        spec_json: str,
        payload: bytes,
        accelerator: str | None,
        metered: bool,
        *sibling_deployments: Any,
    ):
        init_at = time.time()
        self.phases = StartPhases(process_start=replica_start_time(init_at), replica_init=init_at)
        self.app, self.version = app, version
        self.spec = FunctionSpec.model_validate_json(spec_json)
        if not self.spec.image.pip:  # its variables were left out of the runtime env, to land warm
            apply_image_env(self.spec.image.env)
        request = self.spec.gpu_request
        self.meter = MeterClient(
            app, self.spec.name, float(request.count) if request else 0.0, accelerator, enabled=metered
        )
        self.meter.event("started", self.phases.process_start)
        self.meter.start()
        self.phases.report = self.meter.start_phases
        self._ongoing = 0
        self.draining: str | None = None  # why this replica takes no more calls, once it does not
        self._trigger = asyncio.get_running_loop().create_task(self._find_trigger())
        self.startup_error: str | None = None
        try:
            await self._apply_secrets()
            await self._load(payload)
        except Exception as exc:
            # A replica whose unit cannot start answers every call with the reason (500) rather
            # than crash-looping while callers wait.
            self.startup_error = f"{type(exc).__name__}: {exc}"
            logger.error(
                "raygpu: %s/%s failed to start: %s", app, self.spec.name, "".join(traceback.format_exception(exc))
            )
        self.phases.mark("ready")
        self.meter.event("ready")
        logger.info(
            "raygpu: %s/%s v%d ready (pid %d, %s)", app, self.spec.name, version, os.getpid(), self.phases.describe()
        )

    async def _apply_secrets(self) -> None:
        """The variables of the secrets the unit names, in this process's environment before its code
        (and its enter hooks, and an engine's processes) run; fetched from the store, never logged."""
        if self.spec.secrets:
            from deployments.store.actor import get_store

            os.environ.update(await get_store().secret_environment.remote(self.app, self.version, self.spec.name))

    async def _load(self, payload: bytes) -> None:
        """Load the unit's code, weights or engine (marking start phases as it goes)."""

    def startup_error_payload(self) -> dict[str, Any]:
        return error_payload(
            "StartupError",
            f"{self.spec.name} could not start on its replica: {self.startup_error} (fix it and redeploy; "
            f"`raygpu logs {self.app}/{self.spec.name}` has the traceback)",
        )

    @contextlib.contextmanager
    def metered_call(self, bytes_in: int, call: CallContext | None = None) -> Iterator[CallOutcome]:
        """One call: counted in flight for the autoscaler, metered with its status, size, call id
        and attempt when it ends, and the first one marks the replica's first response."""
        started = time.perf_counter()
        outcome = CallOutcome()
        self.meter.call_started()
        self._ongoing += 1
        try:
            yield outcome
        finally:
            self._ongoing -= 1
            self.meter.call_finished(
                outcome.status,
                time.perf_counter() - started,
                bytes_in,
                outcome.bytes_out,
                call_id=call.call_id if call is not None else None,
                attempt=call.attempt if call is not None else None,
            )
            self.phases.first_response()

    def begin_draining(self, reason: str) -> None:
        """Take no more calls and fail the health check, so Serve lets in-flight calls finish and
        starts a replacement (what a hung worker thread needs: Python cannot stop it)."""
        if self.draining is None:
            self.draining = reason
            logger.warning("raygpu: %s/%s replica is being replaced: %s", self.app, self.spec.name, reason)

    def draining_answer(self) -> tuple[int, bytes, int, dict[str, str]]:
        """The answer of a replica being replaced: the gateway sends the call again, to another one."""
        payload = error_payload(
            "ReplicaReplaced", f"this replica of {self.spec.name} is being replaced: {self.draining}"
        )
        return 503, encode_json(payload), self.version, {constants.DRAINING_HEADER: "1"}

    async def check_health(self) -> None:
        if self.draining is not None:
            raise RuntimeError(f"replica is being replaced: {self.draining}")

    async def _find_trigger(self) -> None:
        """What started this replica (a call at zero, a pre-warm) and whether its node was launched
        for it: reported with its first response. The scale-up of a call at zero may be recorded
        a moment after the replica starts, so the lookup is tried a few times."""
        loop = asyncio.get_running_loop()
        try:
            store = await loop.run_in_executor(None, get_store)
            node_id = ray.get_runtime_context().get_node_id()
            self.phases.node_registered_at = await loop.run_in_executor(None, node_started_at, node_id)
            for delay in TRIGGER_RETRY_DELAYS_S:
                demand, decided = await start_trigger(
                    store,
                    self.app,
                    self.spec.name,
                    self.phases.process_start,
                    node_registered_at=self.phases.node_registered_at,
                )
                if decided is not None:
                    self.phases.set_trigger(demand, decided)
                    break
                await asyncio.sleep(delay)
            if "first_response" in self.phases.marks:  # answered before the lookup: report the rest now
                self.meter.start_phases(self.phases.durations())
        except Exception as exc:
            logger.debug("raygpu: no scale event for this start (%s)", exc)

    async def start_check(self) -> str | None:
        """What a deploy's start check reports: why the unit cannot serve (None when it can). Kinds
        whose load does not prove they can answer (an engine) run one request here."""
        return self.startup_error

    async def startup_status(self) -> str | None:
        """Why this replica's unit could not start (None when it did): how a deploy checks a version."""
        return self.startup_error

    async def replica_info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": self.version,
            "ongoing": self._ongoing,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "started_at": self.phases.replica_init,
        }

    def record_autoscaling_stats(self) -> dict[str, float]:
        # A replica being replaced counts as full: it takes nothing, and its replacement is needed.
        busy = self.spec.max_inputs if self.draining is not None else self._ongoing
        return {"raygpu_ongoing": float(busy)}

    async def close(self) -> None:
        """Stop outside Serve (a deploy's start check): release the unit, then meter the stop."""
        self._release()
        self._released = True
        await self.meter.aclose()

    def __del__(self) -> None:
        if getattr(self, "_released", False):
            return
        meter = getattr(self, "meter", None)
        if meter is not None:
            meter.stop()
        self._release()

    def _release(self) -> None:
        """Free what the unit holds when the replica stops (exit hooks, engines, tasks)."""
