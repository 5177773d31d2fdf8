"""Replicas of user functions and classes.

The gateway calls `__call__(method, body)`; the replica validates the keyword arguments against
the type hints and answers `(status, payload)`: user code never decides an HTTP status and never
leaves a caller hanging.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from deployments.calls.context import CallContext, context_of, running_call
from deployments.calls.json_arguments import decoded
from deployments.engines.cuda_guard import cuda_blocked
from deployments.errors import ERROR_SOURCE_HEADER, RemoteCallError
from deployments.lifecycle import run_enter_hooks, run_exit_hooks, run_snap_hooks
from deployments.replicas.base import ReplicaBase, encode_json, error_payload, jsonable
from deployments.replicas.streaming import close_source, item_source
from deployments.signature import ArgumentError, arguments_model, validate_arguments
from deployments.store.actor import get_store

logger = logging.getLogger(f"ray.serve.{__name__}")


async def adoptable(wait_s: float) -> tuple[Any, Any] | None:
    """(instance or None, code) of the unit this process's warm worker holds for the replica
    starting in it: a replica lands only on a worker of its own unit (their runtime envs are the
    same), and waits up to `wait_s` for the worker's loading and `snap=True` hooks when still
    running. None when it holds none (or did not finish in time: the replica then loads its own)."""
    import sys

    preload = sys.modules.get("deployments.node.warm_preload")
    if preload is None or getattr(preload, "FLAVOUR", None) != "app":
        return None
    if not await asyncio.to_thread(preload.HOLD_DONE.wait, wait_s):
        logger.warning("raygpu: the warm worker ran past %.0f s loading the app; this replica loads its own", wait_s)
        return None
    held = preload.HELD
    if "code" not in held or "error" in held:
        return None
    return held.get("instance"), held["code"]


class UnserializableItem(Exception):
    """A generator yielded a value with no JSON form."""


def escaped_call_error_headers(exc: RemoteCallError) -> dict[str, str]:
    """The answer headers of a raygpu call error that escaped user code: it keeps its status and
    type for the outer caller, which does not count it as the function's own failure."""
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "retry-after"}
    headers[ERROR_SOURCE_HEADER] = "callee"
    return headers


class FunctionReplica(ReplicaBase):
    """One replica of a user function: its callables by method (None for a plain function)."""

    async def _load(self, payload: bytes) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=self.spec.max_inputs, thread_name_prefix=f"raygpu-{self.spec.name}"
        )
        self._cancel_checks: set[asyncio.Task[None]] = set()
        self.callables = self._callables(await self._code(payload))
        self.models = {name: arguments_model(fn) for name, fn in self.callables.items()}
        self.phases.mark("engine_init")

    def _after_cancel(self, ran_s: float) -> None:
        """A sync call was cancelled after `ran_s`: its thread finishes it (the result goes nowhere),
        or, past the grace and within the function's hourly limit, the replica is replaced
        (deployments/calls/cancels.py). An unreachable control plane replaces nothing."""

        async def ask() -> None:
            try:
                outcome = await get_store().cancelled_sync_call.remote(self.app, self.spec.name, ran_s)
            except Exception as exc:
                logger.warning("raygpu: could not ask whether to replace %s after a cancel (%s)", self.spec.name, exc)
                return
            if outcome == "replace":
                self.begin_draining(f"a call of {self.spec.name} was cancelled after {ran_s:.1f} s")

        task = asyncio.get_running_loop().create_task(ask())
        self._cancel_checks.add(task)
        task.add_done_callback(self._cancel_checks.discard)

    async def _code(self, payload: bytes) -> Any:
        """The unit's code: as the app-warm worker it landed on loaded it, else from its payload."""
        held = await adoptable(self.spec.startup_timeout)
        if held is not None:
            self.phases.mark("adopted")
            return held[1]
        return cloudpickle.loads(payload)

    def _callables(self, code: Any) -> dict[str | None, Callable[..., Any]]:
        return {None: getattr(code, "fn", code)}  # the plain function behind an SDK `Function`

    async def __call__(
        self, method: str | None, body: Any, bytes_in: int = 0, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, int, dict[str, str]]:
        """Run one call; answer (HTTP status, JSON body, version, extra response headers)."""
        if self.draining is not None:
            return self.draining_answer()
        call = context_of(headers)
        with self.metered_call(bytes_in, call) as outcome:
            status, payload, extra = await self._invoke(method, body, call)
            try:
                encoded = encode_json(payload)
            except (TypeError, ValueError) as exc:
                status, encoded = (
                    500,
                    encode_json(
                        error_payload(
                            "SerializationError",
                            f"{self.spec.name} returned a value that cannot be sent as JSON: {exc}",
                        )
                    ),
                )
            outcome.status, outcome.bytes_out = status, len(encoded)
            return status, encoded, self.version, extra

    def _prepare(self, method: str | None, body: Any, streaming: bool) -> tuple[int, Any] | dict[str, Any]:
        """The validated keyword arguments of a call, or the (status, error payload) refusing it."""
        if self.startup_error is not None:
            return 500, self.startup_error_payload()
        if self.callables.get(method) is None:
            known = ", ".join(m for m in self.callables if m) or "(none)"
            return 404, error_payload("NotFound", f"{self.spec.name} has no method {method!r}; methods: {known}")
        label = self.spec.callable_key(method)
        if self.spec.streams(method) and not streaming:
            return 400, error_payload(
                "GeneratorFunction", f"{label} yields its results: read them as a stream (`.remote_gen(...)`)"
            )
        if streaming and not self.spec.streams(method):
            return 400, error_payload("NotAGenerator", f"{label} returns one result: call it with `.remote(...)`")
        try:
            body = decoded(body)
        except ValueError as exc:
            return 400, error_payload("MalformedJSON", f"the arguments are not valid JSON: {exc}")
        try:
            return validate_arguments(self.models[method], body)
        except ArgumentError as exc:
            return 422, error_payload("ValidationError", str(exc), exc.errors)

    async def _invoke(
        self, method: str | None, body: Any, call: CallContext | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """Run the user's code: (status, payload, extra answer headers). Its own exception answers
        500 marked as the user's (its retry policy applies); a raygpu call error escaping it (a call
        it made that failed, not caught) keeps that error's status and type."""
        arguments = self._prepare(method, body, streaming=False)
        if isinstance(arguments, tuple):
            return (*arguments, {})
        fn = self.callables[method]
        is_async = inspect.iscoroutinefunction(fn)
        try:
            if is_async:
                with running_call(call):
                    async with asyncio.timeout(self.spec.timeout):  # a cancellation is never swallowed
                        result = await fn(**arguments)
            else:
                loop = asyncio.get_running_loop()
                with running_call(call):
                    context = contextvars.copy_context()
                started = time.monotonic()
                future = loop.run_in_executor(self._executor, lambda: context.run(fn, **arguments))
                try:
                    result = await asyncio.wait_for(future, timeout=self.spec.timeout)
                except asyncio.CancelledError:
                    # A cancelled call (a spawned call's DELETE, a caller who left): its thread runs
                    # on. The control plane says whether that is worth a replacement replica.
                    self._after_cancel(time.monotonic() - started)
                    raise
        except TimeoutError:
            if not is_async:  # its thread runs on and holds a worker slot: the replica is replaced
                self.begin_draining(f"a call of {self.spec.name} passed its timeout of {self.spec.timeout:g} s")
            return (
                504,
                error_payload(
                    "Timeout",
                    f"{self.spec.name} did not finish within its timeout of {self.spec.timeout:g} s; "
                    "raise `timeout=` in the decorator if it needs longer",
                ),
                {},
            )
        except RemoteCallError as exc:
            return exc.status, exc.payload(), escaped_call_error_headers(exc)
        except Exception as exc:
            logger.warning("raygpu: %s raised %s", self.spec.name, "".join(traceback.format_exception(exc)))
            return 500, error_payload(type(exc).__name__, str(exc)), {ERROR_SOURCE_HEADER: "user"}
        try:
            return 200, jsonable(result), {}
        except Exception as exc:
            return (
                500,
                error_payload(
                    "SerializationError", f"{self.spec.name} returned a value that cannot be sent as JSON: {exc}"
                ),
                {},
            )

    async def stream(
        self, method: str | None, body: Any, bytes_in: int = 0, headers: dict[str, str] | None = None
    ) -> AsyncIterator[Any]:
        """Run one call of a generator. Yields the start first, `{"status"[, "body", "headers"]}`
        (an error answer carries its JSON body and ends there), then `("item", JSON bytes)` per item
        as it is produced and, when the generator fails or passes its timeout after its first item,
        one `("error", payload)`. The replica counts as busy until the stream ends; a caller that
        leaves cancels it, which stops the generator."""
        if self.draining is not None:
            status, encoded, _, extra = self.draining_answer()
            yield {"status": status, "body": encoded, "headers": extra}
            return
        call = context_of(headers)
        with self.metered_call(bytes_in, call) as outcome:
            prepared = self._prepare(method, body, streaming=True)
            if isinstance(prepared, tuple):
                outcome.status, payload = prepared
                yield {"status": outcome.status, "body": encode_json(payload)}
                return
            deadline = asyncio.get_running_loop().time() + self.spec.timeout
            source = None
            started = False
            try:
                with running_call(call):
                    context = contextvars.copy_context()
                source = item_source(context.run(self.callables[method], **prepared), self._executor, context)
                if source is None:
                    raise TypeError(f"{self.spec.callable_key(method)} did not return a generator")
                while True:
                    try:
                        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                        # cancellation of a caller who left as an item arrives, and run on for nobody.
                        with running_call(call):  # an async generator's body runs here
                            async with asyncio.timeout_at(deadline):
                                item = await anext(source)
                    except StopAsyncIteration:
                        break
                    try:
                        encoded = encode_json(item)
                    except (TypeError, ValueError) as exc:
                        raise UnserializableItem(str(exc)) from None
                    if not started:
                        started = True
                        yield {"status": 200}
                    outcome.bytes_out += len(encoded)
                    yield ("item", encoded)
                outcome.status = 200
                if not started:
                    yield {"status": 200}
            except Exception as exc:
                status, payload, extra = self._stream_failure(method, exc)
                outcome.status = status
                if started:
                    yield ("error", payload)
                else:
                    yield {"status": status, "body": encode_json(payload), "headers": extra}
            finally:
                if source is not None:
                    await close_source(source)

    def _stream_failure(self, method: str | None, exc: Exception) -> tuple[int, dict[str, Any], dict[str, str]]:
        label = self.spec.callable_key(method)
        if isinstance(exc, TimeoutError):
            return (
                504,
                error_payload(
                    "Timeout",
                    f"{label} did not finish streaming within its timeout of {self.spec.timeout:g} s; "
                    "raise `timeout=` in the decorator if it needs longer",
                ),
                {},
            )
        if isinstance(exc, UnserializableItem):
            return (
                500,
                error_payload("SerializationError", f"{label} yielded a value that cannot be sent as JSON: {exc}"),
                {},
            )
        if isinstance(exc, RemoteCallError):
            return exc.status, exc.payload(), escaped_call_error_headers(exc)
        logger.warning("raygpu: %s raised %s", label, "".join(traceback.format_exception(exc)))
        return 500, error_payload(type(exc).__name__, str(exc)), {ERROR_SOURCE_HEADER: "user"}

    def _release(self) -> None:
        if hasattr(self, "_executor"):
            self._executor.shutdown(wait=False, cancel_futures=True)


class ClassReplica(FunctionReplica):
    """One replica of a user class: one instance, its enter hooks run once, its methods the callables.

    On a warm worker that holds this unit (deployments/node/warm_preload.py) it adopts the worker's
    code and instance, whose `snap=True` hooks ran before any call arrived, and runs only the other
    hooks."""

    async def _code(self, payload: bytes) -> Any:
        self.instance = None
        held = await adoptable(self.spec.startup_timeout)
        if held is not None:
            self.instance, code = held  # no instance: a class without snap hooks, created as usual
            self.phases.mark("adopted")
            return code
        return cloudpickle.loads(payload)

    def _callables(self, code: Any) -> dict[str | None, Callable[..., Any]]:
        if self.instance is None:
            with cuda_blocked(f"the constructor of {self.spec.name}"):
                self.instance = code()
            run_snap_hooks(self.instance, guard=cuda_blocked)
        run_enter_hooks(self.instance)
        return {name: getattr(self.instance, name) for name in self.spec.methods}

    def _release(self) -> None:
        if getattr(self, "instance", None) is not None:
            try:
                run_exit_hooks(self.instance)
            except Exception:
                logger.exception("raygpu: exit hook of %s failed", self.spec.name)
        super()._release()
