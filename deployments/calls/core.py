"""The call core: the one place a call reaches a function's replicas, whoever makes it (the
gateway's sync calls, streams and engine forwards, the call runner's spawned calls, the Python
client outside the cluster and inside a replica).

It admits the call against the function's queue bound, brings a parked function back (asking the
parker only when the function is parked, or its deployment went away under the call), resends the
call when its replica died (at most MAX_RESENDS times, each counted), is being replaced, or its
deployment was parked or replaced, all within the caller's deadline; it runs the call again under
the function's retry policy when its code raised, and ends every failure in one typed error
(deployments/errors.py). Serve handles come from a factory and the parker through a callable, so
tests drive every path here with fakes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments import constants
from deployments.calls.admission import Admission
from deployments.calls.context import (
    ATTEMPT_HEADER,
    ATTEMPTS_HEADER,
    CALL_ID_HEADER,
    DEADLINE_HEADER,
    INTERNAL_HEADERS,
    CallContext,
)
from deployments.calls.records import new_call_id
from deployments.errors import (
    ERROR_SOURCE_HEADER,
    FunctionNotFound,
    FunctionTimeout,
    QueueFull,
    RemoteCallError,
    ReplicaLost,
    Unavailable,
    call_error,
)
from deployments.spec import DeployedFunction, FunctionSpec

logger = logging.getLogger("ray.serve.deployments.calls")

# A call whose replica died is sent to another at most this many times.
MAX_RESENDS = 3
# A spawned call (already admitted by its record) that meets a full Serve queue waits this long, then
# is sent again; callers waiting on the answer get QueueFull at once instead.
QUEUE_FULL_PAUSE_S = 1.0
REPLICA_GONE_ERRORS: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


def call_budget(spec: FunctionSpec) -> float:
    """How long a caller waits for a call when it sets no deadline: a replica's start, then every
    run the retry policy allows, with its pauses."""
    policy = spec.retries
    return spec.startup_timeout + spec.timeout * (policy.max_retries + 1) + policy.total_delay()


def queue_full(name: str) -> QueueFull:
    return QueueFull(
        message=f"{name!r} has as many calls in flight as its queue bound (max_containers x max_inputs + "
        f"max_queue); retry after {constants.RETRY_AFTER_S} s",
        headers={"Retry-After": str(constants.RETRY_AFTER_S)},
    )


@dataclass
class Answer:
    """A replica's answer to a call, and how the call got it."""

    status: int
    body: bytes
    version: int
    headers: dict[str, str]
    call_id: str
    attempts: int = 1
    resends: int = 0
    # each run: {"attempt", "finished_at", "status", "error_type"} (a spawned call's record keeps them)
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def user_failure(self) -> bool:
        """The function's own code raised: what its retry policy runs again."""
        return self.status >= 500 and self.headers.get(ERROR_SOURCE_HEADER) == "user"

    def payload(self) -> Any:
        return json.loads(self.body)

    def error(self) -> RemoteCallError:
        """This answer as the exception a Python caller gets (for a status other than 200)."""
        try:
            payload = self.payload()
        except ValueError:
            payload = {"error": {"type": "Error", "message": self.body.decode(errors="replace")}}
        return call_error(self.status, payload, self.headers)

    def response_headers(self) -> dict[str, str]:
        """The headers of this answer over HTTP."""
        return {
            **self.headers,
            "x-raygpu-version": str(self.version),
            CALL_ID_HEADER: self.call_id,
            ATTEMPTS_HEADER: str(self.attempts),
        }


@dataclass
class Opened:
    """A streamed call that has started: its stream, its first item (the answer's start) and the
    call's id and runs."""

    stream: Any
    start: Any
    call_id: str
    attempts: int = 1
    resends: int = 0


@dataclass
class CallCounters:
    """What this process's core did beyond a plain send, since it started."""

    resends: int = 0  # calls sent again after their replica died
    retries: int = 0  # runs again under a retry policy
    brought_back: int = 0  # parked functions brought back for a call
    queue_full: int = 0
    timeouts: int = 0


class _NoHandle(Exception):
    """The deployment's handle could not be made: its application is not in Serve (parked, or
    replaced by a newer version)."""


async def unpark(app: str, function: str) -> None:
    """Bring a parked function back into Serve through the parker (deployments/parking.py)."""
    from deployments.parking import bring_back

    try:
        back = await bring_back(app, function)
    except RuntimeError as exc:
        raise Unavailable(
            message=f"{function!r} is at rest out of Serve and could not be brought back: {exc}"
        ) from None
    if not back:
        raise FunctionNotFound(message=f"{app}/{function} is no longer deployed")


def serve_handle_factory(deployed: DeployedFunction) -> Any:
    from ray import serve

    # .options() starts the handle's router now and returns a handle that shares it
    return serve.get_deployment_handle(deployed.deployment, app_name=deployed.serve_app).options()


class CallCore:
    """Calls a function's replicas for one process. `bring_back(app, function)` brings a parked
    function back (raising the call error when it cannot); `parked(app, function)` says whether it
    is parked (None: this process does not follow the parked set, so a call finds out by trying);
    `handle_factory(deployed)` opens a deployment's Serve handle."""

    def __init__(
        self,
        bring_back: Callable[[str, str], Awaitable[None]] = unpark,
        parked: Callable[[str, str], bool] | None = None,
        handle_factory: Callable[[DeployedFunction], Any] = serve_handle_factory,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.bring_back = bring_back
        self.parked = parked
        self.handle_factory = handle_factory
        self.sleep = sleep
        self.clock = clock
        self.handles: dict[tuple[str, str], Any] = {}
        self.admission = Admission()
        self.counters = CallCounters()

    # --- handles and admission ---------------------------------------------------------------
    def handle(self, deployed: DeployedFunction) -> Any:
        key = (deployed.serve_app, deployed.deployment)
        handle = self.handles.get(key)
        if handle is None:
            try:
                handle = self.handle_factory(deployed)
            except Exception as exc:
                raise _NoHandle(str(exc)) from None
            self.handles[key] = handle
        return handle

    def keep_handles(self, live: set[tuple[str, str]]) -> None:
        """Drop the handles of deployments no longer live (a version replaced by a newer one)."""
        self.handles = {k: v for k, v in self.handles.items() if k in live}

    def admit(self, app: str, spec: FunctionSpec) -> bool:
        """Take a call of `app/spec` in flight unless its queue bound is reached; `release` ends it."""
        if self.admission.admit((app, spec.name), spec.queue_bound):
            return True
        self.counters.queue_full += 1
        return False

    def release(self, app: str, spec: FunctionSpec) -> None:
        self.admission.release((app, spec.name))

    # --- deadlines -----------------------------------------------------------------------------
    def deadline(self, spec: FunctionSpec, caller: CallContext | None = None) -> float:
        """When a call of `spec` stops waiting (this process's monotonic clock): its own budget, or
        what is left of its caller's deadline when that is sooner."""
        deadline = self.clock() + call_budget(spec)
        remaining = caller.remaining_s() if caller is not None else None
        if remaining is not None:
            deadline = min(deadline, self.clock() + remaining)
        return deadline

    def _sent_headers(
        self, headers: dict[str, str] | None, call_id: str, deadline: float, attempt: int
    ) -> dict[str, str]:
        sent = {k: v for k, v in (headers or {}).items() if k.lower() not in INTERNAL_HEADERS}
        sent[CALL_ID_HEADER] = call_id
        sent[DEADLINE_HEADER] = f"{time.time() + (deadline - self.clock()):.3f}"
        sent[ATTEMPT_HEADER] = str(attempt)
        return sent

    # --- calls ---------------------------------------------------------------------------------
    async def call(
        self,
        app: str,
        deployed: DeployedFunction,
        method: str | None,
        body: Any,
        bytes_in: int = 0,
        *,
        headers: dict[str, str] | None = None,
        call_id: str | None = None,
        caller: CallContext | None = None,
        deadline: float | None = None,
        admit: bool = False,
        wait_when_full: bool = False,
    ) -> Answer:
        """Call `method` of a deployed function with `body` (its keyword arguments) and return the
        answer (any status), running it again under the function's retry policy while its code
        raises; raise the call error when no answer came (QueueFull, FunctionTimeout, ReplicaLost,
        Unavailable, FunctionNotFound). `caller`: the call this one is made from (its id and
        deadline carry on). `admit`: count the call against the queue bound here (the gateway
        admits before it reads the body, so it passes False)."""
        spec = deployed.spec
        call_id = _call_id(call_id, caller)
        if deadline is None:
            deadline = self.deadline(spec, caller)
        if admit and not self.admit(app, spec):
            raise queue_full(spec.name)
        try:
            attempt = 0
            resends = 0
            runs: list[dict[str, Any]] = []
            while True:
                attempt += 1
                sent = self._sent_headers(headers, call_id, deadline, attempt)

                async def send(handle: Any, remaining: float) -> Any:
                    response = handle.remote(method, body, bytes_in, sent)
                    try:
                        return await asyncio.wait_for(_await(response), timeout=remaining)
                    except (TimeoutError, asyncio.CancelledError):
                        response.cancel()
                        raise

                (status, payload, version, extra), sent_again = await self._reach(
                    app, deployed, send, _answer_draining, deadline, wait_when_full
                )
                resends += sent_again
                answer = Answer(status, payload, version, dict(extra), call_id, attempt, resends, runs)
                runs.append(
                    {
                        "attempt": attempt,
                        "finished_at": time.time(),
                        "status": status,
                        "error_type": _error_type(payload) if status != 200 else None,
                    }
                )
                if not await self._runs_again(app, spec, call_id, attempt, answer.user_failure, deadline):
                    return answer
        finally:
            if admit:
                self.release(app, spec)

    async def open_stream(
        self,
        app: str,
        deployed: DeployedFunction,
        invoke: Callable[[Any, dict[str, str]], Any],
        *,
        headers: dict[str, str] | None = None,
        call_id: str | None = None,
        caller: CallContext | None = None,
        deadline: float | None = None,
        first: Callable[[Any, float], Awaitable[Any]] | None = None,
        resend_lost: bool = True,
    ) -> Opened | None:
        """Start a streamed call: `invoke(streaming_handle, headers)` sends it, `first(stream,
        remaining)` waits for its first item (None: the caller left, and so does this). A start
        that is an error answer of the function's code is run again under its retry policy; the
        items after it are the caller's to read. `resend_lost=False`: a replica that died is not
        resent to (an engine's process that died of the request would take the next one too)."""
        spec = deployed.spec
        call_id = _call_id(call_id, caller)
        if deadline is None:
            deadline = self.deadline(spec, caller)
        wait_first = first or _first_item
        attempt = 0
        resends = 0
        while True:
            attempt += 1
            sent = self._sent_headers(headers, call_id, deadline, attempt)

            async def send(handle: Any, remaining: float) -> Any:
                stream = invoke(handle.options(stream=True), sent)
                try:
                    start = await wait_first(stream, remaining)
                except (TimeoutError, asyncio.CancelledError):
                    stream.cancel()
                    raise
                if start is None:
                    stream.cancel()
                return stream, start

            (stream, start), sent_again = await self._reach(
                app, deployed, send, _start_draining, deadline, False, max_resends=MAX_RESENDS if resend_lost else 0
            )
            resends += sent_again
            if start is None:
                return None
            start_headers = dict(start.get("headers") or {}) if isinstance(start, dict) else {}
            failed = isinstance(start, dict) and start.get("status", 200) >= 500
            user_failure = failed and start_headers.get(ERROR_SOURCE_HEADER) == "user"
            if not await self._runs_again(app, spec, call_id, attempt, user_failure, deadline):
                return Opened(stream, start, call_id, attempt, resends)

    async def _runs_again(
        self, app: str, spec: FunctionSpec, call_id: str, attempt: int, user_failure: bool, deadline: float
    ) -> bool:
        """Whether run `attempt` of a call, which ended as it did, runs again under the function's
        retry policy: only when its code raised, runs are left and the pause fits the deadline (the
        pause is slept here)."""
        policy = spec.retries
        if not user_failure or attempt > policy.max_retries:
            return False
        pause = policy.delay(attempt)
        if self.clock() + pause >= deadline:
            return False
        self.counters.retries += 1
        logger.info(
            "raygpu: %s/%s raised on run %d of call %s; running it again in %.3g s",
            app,
            spec.name,
            attempt,
            call_id,
            pause,
        )
        await self.sleep(pause)
        return True

    async def _reach(
        self,
        app: str,
        deployed: DeployedFunction,
        send: Callable[[Any, float], Awaitable[Any]],
        draining: Callable[[Any], bool],
        deadline: float,
        wait_when_full: bool,
        max_resends: int = MAX_RESENDS,
    ) -> tuple[Any, int]:
        """Send one run of a call until a replica answers it: (the answer, how often it was resent
        after a replica died)."""
        spec = deployed.spec
        resends = 0
        replacing = False  # a replica being replaced answered; one found gone after is part of that
        brought_back_at: float | None = None
        if self.parked is not None and self.parked(app, spec.name):
            await self._bring_back(app, spec.name, deadline)
            brought_back_at = self.clock()
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise self._timeout(spec)
            try:
                answer = await send(self.handle(deployed), remaining)
            except BackPressureError:
                if not wait_when_full:
                    self.counters.queue_full += 1
                    raise queue_full(spec.name) from None
                await self._pause(QUEUE_FULL_PAUSE_S, deadline)
                continue
            except (DeploymentUnavailableError, _NoHandle):
                # parked between the parked set's word and the call, or brought back while this
                # handle's router still has Serve's word that it was gone: bring it back once, then
                # send again until the router has caught up
                if brought_back_at is None:
                    await self._bring_back(app, spec.name, deadline)
                    brought_back_at = self.clock()
                elif self.clock() - brought_back_at > constants.ROUTER_CATCH_UP_S:
                    raise Unavailable(
                        message=f"{spec.name!r} left Serve during the call and could not be reached again; "
                        "retry shortly",
                        headers={"Retry-After": str(constants.RETRY_AFTER_S)},
                    ) from None
                await self._pause(constants.DRAINING_RETRY_S, deadline)
                continue
            except TimeoutError:
                raise self._timeout(spec) from None
            except REPLICA_GONE_ERRORS as exc:
                if replacing:
                    await self._pause(constants.DRAINING_RETRY_S, deadline)
                    continue
                resends += 1
                if resends > max_resends:
                    raise ReplicaLost(
                        message=f"the replica running {spec.name!r} went away during the call "
                        f"({type(exc).__name__}: {_first_line(exc)})"
                        + (f", and so did the {max_resends} it was sent to after" if max_resends else "")
                        + f"; `raygpu logs {app}/{spec.name}` has the replicas' output",
                        headers={"Retry-After": str(constants.RETRY_AFTER_S)},
                    ) from exc
                self.counters.resends += 1
                logger.warning("raygpu: a replica of %s/%s died under a call; sending it again", app, spec.name)
                continue
            if draining(answer):
                replacing = True
                await self._pause(constants.DRAINING_RETRY_S, deadline)
                continue
            return answer, resends

    async def _bring_back(self, app: str, function: str, deadline: float) -> None:
        self.counters.brought_back += 1
        try:
            await asyncio.wait_for(self.bring_back(app, function), timeout=max(deadline - self.clock(), 0.001))
        except TimeoutError:
            raise Unavailable(
                message=f"{function!r} is at rest out of Serve and did not come back within the call's deadline",
                headers={"Retry-After": str(constants.RETRY_AFTER_S)},
            ) from None

    async def _pause(self, seconds: float, deadline: float) -> None:
        if self.clock() + seconds >= deadline:
            await self.sleep(max(deadline - self.clock(), 0))
        else:
            await self.sleep(seconds)

    def _timeout(self, spec: FunctionSpec) -> FunctionTimeout:
        self.counters.timeouts += 1
        return FunctionTimeout(
            message=f"no replica of {spec.name!r} answered within the call's deadline (timeout {spec.timeout:g} s "
            f"plus startup_timeout {spec.startup_timeout:g} s, or less when its caller had less left); "
            "`raygpu status` shows its replicas"
        )


def _call_id(given: str | None, caller: CallContext | None) -> str:
    """A call's id: the one given (the gateway's), else its caller's (a nested call), else a new one."""
    return given or (caller.call_id if caller is not None else None) or new_call_id()


def _answer_draining(answer: Any) -> bool:
    return constants.DRAINING_HEADER in answer[3]


def _start_draining(opened: Any) -> bool:
    _stream, start = opened
    return isinstance(start, dict) and constants.DRAINING_HEADER in dict(start.get("headers") or {})


async def _first_item(stream: Any, remaining: float) -> Any:
    return await asyncio.wait_for(stream.__anext__(), timeout=remaining)


async def _await(response: Any) -> Any:
    return await response


def _error_type(body: bytes) -> str | None:
    try:
        error = json.loads(body).get("error")
        return str(error.get("type")) if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "error_msg", "") or exc).strip()
    return text.splitlines()[0][:300] if text else ""
