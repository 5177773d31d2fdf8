"""Calling deployed functions from Python: `raygpu.lookup("app", "fn").remote(...)`, `.map(...)`,
`.starmap(...)` and `.remote_gen(...)`.

Calls go through this process's call core (deployments/calls/core.py) over Serve handles straight
to the function's deployment (a process attached to the cluster is trusted, as with `ray`; so is a
function calling another inside the cluster), with the admission, resends, retries and errors of a
call over HTTP; each call is recorded as an arrival for the autoscaler. Inside a replica, a call
carries the call id and what is left of the deadline of the call that runs it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

import ray

from deployments.calls.context import CallContext, current_call
from deployments.errors import call_error
from deployments.signature import bind_positional
from deployments.spec import DeployedFunction, live_unit
from raygpu.sdk.batch import batch_window, run_batch
from raygpu.sdk.calls import FunctionCall
from raygpu.sdk.connection import connect
from raygpu.sdk.control import store
from raygpu.sdk.errors import FunctionNotFound, NoClusterError, NotFoundError, RemoteCallError, Unavailable

# How long a process trusts what it last heard of an app's live version (`lookup`).
LOOKUP_FRESH_S = 2.0
_live: dict[str, tuple[float, dict[str, Any] | None]] = {}
_live_lock = threading.Lock()


def call_loop() -> Any:
    """The process's call loop (raygpu/sdk/call_loop.py), imported when a call is first made: it
    brings Ray Serve, which `import raygpu` (an app file, the CLI) does not need."""
    from raygpu.sdk import call_loop as loop

    return loop


class RemoteCaller:
    """`fn.remote`: call it to wait for the result, or await `fn.remote.aio(...)` in async code."""

    def __init__(self, function: "RemoteFunction"):
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        method, arguments = self.function._prepare_call(args, kwargs)
        return self.function._call(method, arguments, current_call())

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        method, arguments = self.function._prepare_call(args, kwargs)
        return await call_loop().run_async(self.function._call_async(method, arguments, current_call()))


class RemoteFunction:
    """A deployed function (or one method of a deployed class)."""

    def __init__(self, app: str, deployed: DeployedFunction, method: str | None = None):
        self.app = app
        self.deployed = deployed
        self.method = method

    def __getattr__(self, name: str) -> "RemoteFunction":
        spec = self.deployed.spec
        if not spec.methods or self.method is not None or name.startswith("_"):
            raise AttributeError(name)
        if name not in spec.methods:
            raise NotFoundError(f"class {spec.name!r} has no method {name!r}; methods: {', '.join(spec.methods)}")
        return RemoteFunction(self.app, self.deployed, name)

    @property
    def _label(self) -> str:
        return self.deployed.spec.name + (f".{self.method}" if self.method else "")

    def _callable(self) -> str | None:
        """The method to call (None for a function); RemoteCallError when a class has no method picked."""
        spec = self.deployed.spec
        if spec.methods and self.method is None:
            raise RemoteCallError(400, "MethodRequired", f"pick a method: lookup(...).{spec.methods[0]}.remote(...)")
        return self.method

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        spec = self.deployed.spec
        parameters = spec.parameters.get(spec.callable_key(self.method))
        if args and parameters is None:
            raise TypeError(f"{self._label}: this deployment does not record its parameters; pass keyword arguments")
        return bind_positional(self._label, parameters or [], args, kwargs)

    def _refuse_generator(self, use: str) -> None:
        if self.deployed.spec.streams(self.method):
            raise RemoteCallError(400, "GeneratorFunction", f"{self._label} yields its results: iterate {use} instead")

    @property
    def remote(self) -> "RemoteCaller":
        """Call the deployed function and return its result: `.remote(...)`, or `await
        .remote.aio(...)` from async code; raise its call error (raygpu.QueueFull, FunctionTimeout,
        RemoteError, ReplicaLost, ...) on failure."""
        return RemoteCaller(self)

    def _prepare_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        method = self._callable()
        self._refuse_generator(".remote_gen(...)")
        return method, self._bind(args, kwargs)

    async def _call_async(self, method: str | None, kwargs: dict[str, Any], caller: CallContext | None) -> Any:
        """One call through this process's call core (on its loop); the result, or the call error.
        When the version it knows left Serve (a newer one went live), it is sent to the live one."""
        spec = self.deployed.spec
        core = call_loop().core()
        call_loop().record_arrival(self.app, spec.name)
        try:
            answer = await core.call(self.app, self.deployed, method, kwargs, caller=caller, admit=True)
        except (Unavailable, FunctionNotFound):
            live = await store().live_app.remote(self.app)
            with _live_lock:
                _live[self.app] = (time.monotonic(), live)
            current = _find(self.app, spec.name, live)
            if current.serve_app == self.deployed.serve_app:
                raise
            self.deployed = current
            answer = await core.call(self.app, current, method, kwargs, caller=caller, admit=True)
        if answer.status != 200:
            raise answer.error()
        return answer.payload()

    def _call(self, method: str | None, kwargs: dict[str, Any], caller: CallContext | None = None) -> Any:
        return call_loop().run(self._call_async(method, kwargs, caller))

    def spawn(self, *args: Any, **kwargs: Any) -> FunctionCall:
        """Start the call in the background and return at once: a FunctionCall to poll (`.get()`),
        cancel, or look up later by its `call_id`. The call's record survives replica and gateway
        restarts; arguments must be JSON values (they are kept with the record)."""
        from deployments.calls.runner import get_call_runner

        method = self._callable()
        self._refuse_generator(".remote_gen(...)")
        arguments = self._bind(args, kwargs)
        try:
            encoded = json.dumps(arguments, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{self._label}.spawn: the arguments must be JSON values ({exc})") from None
        spec = self.deployed.spec
        bound = spec.queue_bound
        created = ray.get(store().create_call.remote(self.app, spec.name, method, encoded, None, bound))
        refused = created.get("refused")
        if refused is not None and refused["type"] == "QueueFull":
            raise RemoteCallError(
                503,
                "QueueFull",
                f"{self._label} has {bound} spawned calls not finished (max_containers x max_inputs + max_queue); "
                "retry when some have finished",
            )
        if refused is not None:
            raise RemoteCallError(refused["status"], refused["type"], refused["message"])
        record = created["record"]
        try:
            get_call_runner().submit.remote(record["call_id"])
        except ValueError:
            pass  # the runner's sweep finds the recorded call once it is back
        return FunctionCall(record["call_id"])

    def map(
        self,
        *iterables: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Call the function once per element of `iterables` (zipped, as the builtin `map`), many
        at once (up to `max_containers × max_inputs`); `kwargs` go to every call. Outputs in input
        order (`order_outputs=False`: as they finish). A failed call raises its RemoteCallError
        once the calls in flight settle, or with `return_exceptions=True` yields it in place."""
        return self.starmap(
            zip_equal(iterables), kwargs=kwargs, order_outputs=order_outputs, return_exceptions=return_exceptions
        )

    def starmap(
        self,
        input_iterator: Iterable[tuple[Any, ...]],
        kwargs: dict[str, Any] | None = None,
        order_outputs: bool = True,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """As `map`, with each element a tuple of positional arguments."""
        shared = dict(kwargs or {})
        return self.map_kwargs(
            (self._bind(tuple(args), shared) for args in input_iterator),
            order_outputs=order_outputs,
            return_exceptions=return_exceptions,
        )

    def map_kwargs(
        self,
        inputs: Iterable[dict[str, Any]],
        order_outputs: bool = True,
        return_exceptions: bool = False,
        max_in_flight: int | None = None,
    ) -> Iterator[Any]:
        """As `map`, with each element a dict of keyword arguments (what `raygpu map` reads);
        `max_in_flight` lowers the number of calls at once below the function's capacity."""
        method = self._callable()
        self._refuse_generator(".remote_gen(...) per input")
        spec = self.deployed.spec
        window = batch_window(spec.max_containers, spec.max_inputs)
        if max_in_flight is not None:
            window = max(1, min(window, max_in_flight))
        caller = current_call()  # map's threads carry the call it is made from on
        return run_batch(
            lambda arguments: self._call(method, arguments, caller),
            inputs,
            window=window,
            order_outputs=order_outputs,
            return_exceptions=return_exceptions,
        )

    def remote_gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Call a function whose body yields; iterate its items as the replica produces them.
        Closing the iterator early stops the generator on the replica."""
        method = self._callable()
        spec = self.deployed.spec
        if not spec.streams(method):
            raise RemoteCallError(400, "NotAGenerator", f"{self._label} returns one result: call .remote(...)")
        arguments = self._bind(args, kwargs)
        return self._stream(method, arguments)

    def _stream(self, method: str | None, arguments: dict[str, Any]) -> Iterator[Any]:
        spec = self.deployed.spec
        caller = current_call()
        call_loop().record_arrival(self.app, spec.name)
        opened = call_loop().run(
            call_loop()
            .core()
            .open_stream(
                self.app,
                self.deployed,
                lambda handle, sent: handle.stream.remote(method, arguments, 0, sent),
                caller=caller,
            )
        )
        assert opened is not None  # only a caller that can leave (the gateway's) gets None
        start, stream = opened.start, opened.stream
        if start["status"] != 200:
            raise call_error(start["status"], json.loads(start["body"]), dict(start.get("headers") or {}))
        finished = False
        try:
            while True:
                try:
                    kind, value = call_loop().run(_next_item(stream))
                except StopAsyncIteration:
                    break
                if kind == "error":
                    raise call_error(500, value, {})
                yield json.loads(value)
            finished = True
        finally:
            if not finished:
                stream.cancel()

    def __repr__(self) -> str:
        suffix = f".{self.method}" if self.method else ""
        return f"<raygpu.RemoteFunction {self.app}/{self.deployed.spec.name}{suffix}>"


def zip_equal(iterables: tuple[Iterable[Any], ...]) -> Iterator[tuple[Any, ...]]:
    """`map`'s inputs: the iterables zipped, refused when their lengths differ (at once when they
    have lengths, else when the shorter one ends) instead of silently dropping the rest."""
    if not iterables:
        raise TypeError("map needs at least one iterable of inputs")
    lengths = [len(it) for it in iterables if hasattr(it, "__len__")]  # type: ignore[arg-type]
    if len(lengths) == len(iterables) and len(set(lengths)) > 1:
        raise ValueError(f"map's iterables must have the same length; they have {', '.join(map(str, lengths))}")

    def pairs() -> Iterator[tuple[Any, ...]]:
        try:
            yield from zip(*iterables, strict=True)
        except ValueError as exc:
            raise ValueError(f"map's iterables must have the same length ({exc})") from None

    return pairs()


async def _next_item(stream: Any) -> Any:
    return await stream.__anext__()


def lookup(app: str, name: str, *, address: str | None = None) -> RemoteFunction:
    """Find a deployed function or class by app and name (connecting to the cluster if needed).
    The app's live version is asked of the control plane at most every LOOKUP_FRESH_S per process,
    so a function may look up the next stage on every call; a call that finds the version it was
    given gone asks again."""
    connect(address)
    return RemoteFunction(app, _find(app, name, _live_app(app)))


def _live_app(app: str) -> dict[str, Any] | None:
    with _live_lock:
        cached = _live.get(app)
    if cached is not None and time.monotonic() - cached[0] < LOOKUP_FRESH_S:
        return cached[1]
    # asked from the call loop: inside an async function of a replica this waits without ray.get
    entry = call_loop().run(_ask_live_app(app))
    with _live_lock:
        _live[app] = (time.monotonic(), entry)
    return entry


async def _ask_live_app(app: str) -> dict[str, Any] | None:
    return await store().live_app.remote(app)


def _find(app: str, name: str, entry: dict[str, Any] | None) -> DeployedFunction:
    if entry is None:
        raise NotFoundError(f"app {app!r} is not deployed; `raygpu ls` lists the deployed apps")
    deployed = live_unit(entry, name)
    if deployed is not None:
        return deployed
    known = ", ".join(f["spec"]["name"] for f in entry["functions"])
    raise NotFoundError(f"app {app!r} has no function or class {name!r}; it has: {known}")


def call_over_http(
    url: str,
    target: str,
    data: str,
    token: str | None = None,
    timeout_s: float = 3600,
    fingerprint: str | None = None,
) -> str:
    """POST a JSON body to APP/FN (or APP/Class/method) through the gateway at `url` (accepting only
    the certificate with `fingerprint` when given); the answer's body, or RemoteCallError with the
    gateway's status and error."""
    from raygpu.sdk.pinning import url_opener

    path = target.strip("/")
    if path.count("/") not in (1, 2):
        raise ValueError("name the target as APP/FUNCTION or APP/Class/method")
    try:
        json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--data is not valid JSON: {exc}") from None
    request = urllib.request.Request(
        f"{url.rstrip('/')}/{path}", data=data.encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with url_opener(fingerprint).open(request, timeout=timeout_s) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        try:
            payload = json.loads(body)
            payload["error"]["type"]
        except (ValueError, KeyError, TypeError):
            raise RemoteCallError(exc.code, "HTTPError", body) from None
        raise call_error(exc.code, payload, dict(exc.headers.items())) from None
    except urllib.error.URLError as exc:
        raise NoClusterError(f"cannot reach the gateway at {url}: {exc.reason}") from None
