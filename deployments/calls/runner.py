"""The call runner: one detached actor on the head that runs spawned calls and delivers their
webhooks. Records live in the store, so a call outlives the gateway that took it, and a restarted
runner takes up every call still open (at least once) and every webhook not yet delivered."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

import ray
from ray import serve
from ray.serve.exceptions import BackPressureError

from deployments import constants
from deployments.calls.callbacks import (
    DELIVERY_TIMEOUT_S,
    RETRY_DELAYS_S,
    SIGNATURE_HEADER,
    CallbackRefused,
    check_callback_url,
    sign,
    webhook_secret,
)
from deployments.head_actors import start_head_actor
from deployments.parking import bring_back
from deployments.spec import DeployedFunction
from deployments.store.actor import get_store

logger = logging.getLogger(__name__)

RUNNER_ACTOR_NAME = "raygpu-call-runner"
# Spawned calls in flight at once from the runner; more wait in the store, in order.
MAX_RUNNING_CALLS = 1000
# How often the runner looks for open calls and undelivered webhooks nobody is working on.
SWEEP_INTERVAL_S = 5.0
# A full queue (the function's max_queue) holds a spawned call back this long, then it is sent again.
QUEUE_FULL_PAUSE_S = 1.0
REPLICA_GONE_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


class CallRunner:
    def __init__(self, signing_key: str):
        self.signing_key = signing_key
        self.store = get_store()
        self.calls: dict[str, asyncio.Task] = {}
        self.deliveries: dict[str, asyncio.Task] = {}
        self.handles: dict[tuple[str, str], Any] = {}
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
        entry = await self.store.live_app.remote(app)
        for raw in entry["functions"] if entry else []:
            deployed = DeployedFunction.model_validate(raw)
            if deployed.spec.name == unit:
                return deployed
        return None

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
        self.store.record_arrivals.remote([(app, deployed.spec.name, time.time())])
        try:
            back = await bring_back(app, deployed.spec.name)
        except RuntimeError as exc:
            await self.store.finish_call.remote(call_id, "failed", None, {"type": "Unavailable", "message": str(exc)})
            return
        if not back:
            await self.store.finish_call.remote(
                call_id, "failed", None, {"type": "NotFound", "message": f"{app}/{work['unit']} is no longer deployed"}
            )
            return
        status, payload = await self._call(deployed, work["method"], work["arguments"])
        if status == 200:
            await self.store.finish_call.remote(call_id, "succeeded", payload, None)
        else:
            error = payload.get("error") if isinstance(payload, dict) else None
            await self.store.finish_call.remote(
                call_id, "failed", None, error or {"type": "Error", "message": str(payload), "status": status}
            )

    async def _call(self, deployed: DeployedFunction, method: str | None, arguments: dict[str, Any]) -> tuple[int, Any]:
        """One call of the unit as the gateway makes it: retried on a replica being replaced, on a
        full queue, and (up to `retries`) on a replica that died; cancelled with this task."""
        spec = deployed.spec
        key = (deployed.serve_app, deployed.deployment)
        if key not in self.handles:
            self.handles[key] = serve.get_deployment_handle(deployed.deployment, app_name=deployed.serve_app)
        handle = self.handles[key]
        budget = spec.timeout + spec.startup_timeout
        deadline = time.monotonic() + budget
        died = 0
        while True:
            response = handle.remote(method, arguments, 0, {})
            try:
                status, body, _version, headers = await asyncio.wait_for(
                    _await(response), timeout=max(deadline - time.monotonic(), 0.001)
                )
            except asyncio.CancelledError:
                response.cancel()
                raise
            except TimeoutError:
                response.cancel()
                return 504, {
                    "error": {"type": "Timeout", "message": f"no replica of {spec.name!r} answered within {budget:g} s"}
                }
            except BackPressureError:
                await asyncio.sleep(QUEUE_FULL_PAUSE_S)
                continue
            except REPLICA_GONE_ERRORS as exc:
                died += 1
                if died <= spec.retries:
                    continue
                return 500, {
                    "error": {"type": "ReplicaDied", "message": f"the replica running {spec.name!r} exited ({exc})"}
                }
            if constants.DRAINING_HEADER in headers and time.monotonic() < deadline:
                await asyncio.sleep(constants.DRAINING_RETRY_S)
                continue
            return status, json.loads(body)

    async def _deliver(self, call_id: str) -> None:
        """POST the final record to the call's webhook until it answers 2xx (at least once),
        pausing RETRY_DELAYS_S between attempts; every attempt is kept in the record."""
        try:
            record = await self.store.get_call.remote(call_id)
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
            secret = webhook_secret(self.signing_key, record["app"])
            for attempt in range(len(callback["attempts"]), len(RETRY_DELAYS_S) + 1):
                record = await self.store.get_call.remote(call_id)
                record.pop("callback", None)
                body = json.dumps(record, separators=(",", ":")).encode()
                outcome = await asyncio.to_thread(post_callback, callback["url"], body, sign(secret, body), allowed)
                delivered = outcome.get("status") is not None and 200 <= outcome["status"] < 300
                refused = outcome.pop("refused", False)
                gave_up = not delivered and (refused or attempt >= len(RETRY_DELAYS_S))
                await self.store.record_callback_attempt.remote(call_id, outcome, delivered, gave_up)
                if delivered or gave_up:
                    return
                await asyncio.sleep(RETRY_DELAYS_S[attempt])
        finally:
            self.deliveries.pop(call_id, None)


def post_callback(url: str, body: bytes, signature: str, allowed: list[str]) -> dict[str, Any]:
    """One delivery attempt: {"at", "status"} or {"at", "error"[, "refused"]}. The URL is checked
    again first: what its host resolves to may have changed since the call was spawned."""
    at = time.time()
    try:
        check_callback_url(url, allowed)
    except CallbackRefused as exc:
        return {"at": at, "error": str(exc), "refused": True}
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature, "User-Agent": "raygpu-webhook"},
    )
    try:
        with _NO_REDIRECTS.open(request, timeout=DELIVERY_TIMEOUT_S) as response:
            return {"at": at, "status": response.status}
    except urllib.error.HTTPError as exc:
        return {"at": at, "status": exc.code}
    except (urllib.error.URLError, OSError) as exc:
        return {"at": at, "error": f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"}


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook receiver's redirect is not followed: it could point anywhere, past the check."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


async def _await(response: Any) -> Any:
    return await response


def start_call_runner(signing_key: str) -> Any:
    """Create the detached call runner on the head node, or return the running one."""
    handle = start_head_actor(CallRunner, RUNNER_ACTOR_NAME, signing_key, max_concurrency=1000)
    ray.get(handle.ping.remote())
    return handle


def get_call_runner() -> Any:
    return ray.get_actor(RUNNER_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)
