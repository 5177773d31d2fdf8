"""The call runner: one detached actor on the head that runs spawned calls and delivers their
webhooks. Records live in the store, so a call outlives the gateway that took it, and a restarted
runner takes up every call still open (at least once) and every webhook not yet delivered."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from deployments import constants
from deployments.calls.callbacks import (
    RETRY_DELAYS_S,
    SIGNATURE_HEADER,
    sign,
    standard_webhook_headers,
    webhook_secret,
)
from deployments.calls.core import CallCore
from deployments.calls.delivery import post_callback
from deployments.calls.json_arguments import JsonArguments
from deployments.errors import ERROR_SOURCE_HEADER, RemoteCallError
from deployments.head_actors import start_head_actor
from deployments.spec import DeployedFunction, live_unit
from deployments.store.actor import get_store

logger = logging.getLogger(__name__)

RUNNER_ACTOR_NAME = "raygpu-call-runner"
# Spawned calls in flight at once from the runner; more wait in the store, in order.
MAX_RUNNING_CALLS = 1000
# How often the runner looks for open calls and undelivered webhooks nobody is working on.
SWEEP_INTERVAL_S = 5.0


class CallRunner:
    def __init__(self, signing_key: str):
        self.signing_key = signing_key
        self.store = get_store()
        self.calls: dict[str, asyncio.Task] = {}
        self.deliveries: dict[str, asyncio.Task] = {}
        self.core = CallCore()
        self.slots = asyncio.Semaphore(MAX_RUNNING_CALLS)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def ping(self) -> bool:
        return True

    async def submit(self, call_id: str) -> None:
        """Run a call the store has just recorded."""
        self._start(call_id)

    async def cancel(self, call_id: str) -> bool:
        """Stop a call the store has marked cancelled; True when it was running here."""
        task = self.calls.get(call_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    def _start(self, call_id: str) -> None:
        if call_id not in self.calls:
            self.calls[call_id] = asyncio.get_running_loop().create_task(self._run(call_id))

    async def _sweep(self) -> None:
        while True:
            try:
                for call_id in await self.store.open_calls.remote():
                    self._start(call_id)
                for call_id in await self.store.undelivered_callbacks.remote():
                    if call_id not in self.deliveries and call_id not in self.calls:
                        self.deliveries[call_id] = asyncio.get_running_loop().create_task(self._deliver(call_id))
            except Exception as exc:
                logger.warning("raygpu call runner: sweep failed (%s); retrying", exc)
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def _deployed(self, app: str, unit: str) -> DeployedFunction | None:
        return live_unit(await self.store.live_app.remote(app), unit)

    async def _run(self, call_id: str) -> None:
        try:
            async with self.slots:
                await self._execute(call_id)
            await self._deliver(call_id)
        except asyncio.CancelledError:
            await self._deliver(call_id)
        except Exception:
            logger.exception("raygpu call runner: call %s failed in the runner", call_id)
            await self.store.finish_call.remote(
                call_id, "failed", None, {"type": "InternalError", "message": "raygpu failed to run this call"}
            )
        finally:
            self.calls.pop(call_id, None)

    async def _execute(self, call_id: str) -> None:
        work = await self.store.call_work.remote(call_id)
        if work is None or work["record"]["status"] not in ("pending", "running"):
            return
        app = work["record"]["app"]
        deployed = await self._deployed(app, work["unit"])
        if deployed is None:
            await self.store.finish_call.remote(
                call_id,
                "failed",
                None,
                {"type": "NotFound", "message": f"{app}/{work['unit']} is no longer deployed"},
            )
            return
        if work["record"]["status"] == "pending" and not await self.store.start_call.remote(call_id):
            return  # cancelled before it started
        if not work.get("scheduled"):  # the schedule is known: its runs are not traffic to learn from
            self.store.record_arrivals.remote([(app, deployed.spec.name, time.time())])
        try:
            # Admitted when its record was made (the store's bound): a full Serve queue holds it back.
            answer = await self.core.call(
                app, deployed, work["method"], JsonArguments(work["arguments"]), call_id=call_id, wait_when_full=True
            )
        except RemoteCallError as exc:
            await self.store.finish_call.remote(
                call_id, "failed", None, {**exc.payload()["error"], "status": exc.status}
            )
            return
        if answer.status == 200:
            await self.store.finish_call.remote(call_id, "succeeded", answer.body, None, answer.runs)
        else:
            error = answer.error()
            recorded = {**error.payload()["error"], "status": error.status}
            if ERROR_SOURCE_HEADER in error.headers:  # the function's own failure, or its callee's
                recorded["source"] = error.headers[ERROR_SOURCE_HEADER]
            await self.store.finish_call.remote(call_id, "failed", None, recorded, answer.runs)

    async def _deliver(self, call_id: str) -> None:
        """POST the final record to the call's webhook until it answers 2xx (at least once),
        pausing RETRY_DELAYS_S between attempts; every attempt is kept in the record."""
        try:
            record = await self.store.call_state.remote(call_id)
            if (
                record is None
                or not record.get("callback")
                or record["status"] not in ("succeeded", "failed", "cancelled")
            ):
                return
            callback = record["callback"]
            if callback["delivered"] or callback["gave_up"]:
                return
            allowed = await self.store.get_setting.remote("callback_allow", [])
            incarnation = await self.store.app_incarnation.remote(record["app"])
            secret = webhook_secret(self.signing_key, record["app"], incarnation or 0)
            for attempt in range(len(callback["attempts"]), len(RETRY_DELAYS_S) + 1):
                found = await self.store.call_json.remote(call_id, None, 0.0, False)
                if found is None:
                    return  # past retention
                body = found[1]
                headers = {
                    SIGNATURE_HEADER: sign(secret, body),
                    **standard_webhook_headers(secret, call_id, body),
                }
                outcome = await asyncio.to_thread(post_callback, callback["url"], body, headers, allowed)
                delivered = outcome.get("status") is not None and 200 <= outcome["status"] < 300
                refused = outcome.pop("refused", False)
                gave_up = not delivered and (refused or attempt >= len(RETRY_DELAYS_S))
                await self.store.record_callback_attempt.remote(call_id, outcome, delivered, gave_up)
                if delivered or gave_up:
                    return
                await asyncio.sleep(RETRY_DELAYS_S[attempt])
        finally:
            self.deliveries.pop(call_id, None)


def start_call_runner(signing_key: str) -> Any:
    """Create the detached call runner on the head node, or return the running one."""
    handle = start_head_actor(CallRunner, RUNNER_ACTOR_NAME, signing_key, max_concurrency=1000)
    ray.get(handle.ping.remote())
    return handle


def get_call_runner() -> Any:
    return ray.get_actor(RUNNER_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)
