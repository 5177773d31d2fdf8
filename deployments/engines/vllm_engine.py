"""A vLLM engine with vLLM's own OpenAI-compatible server app, run in-process and driven by ASGI
calls instead of a socket: raygpu forwards requests to it, so the OpenAI schemas, validation,
errors and SSE streaming are vLLM's. Imports vllm, never Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from deployments.engines.cpu_caps import CpuCaps, cpu_engine_dtype, explain_engine_death, host_caps
from deployments.engines.vllm_warm_core import WARM_CORES

logger = logging.getLogger(__name__)

# Quiet, offline, no usage reporting: vLLM must never reach out from a replica.
for _name, _value in (("VLLM_NO_USAGE_STATS", "1"), ("DO_NOT_TRACK", "1"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_name, _value)


def sleep_mode_supported() -> tuple[bool, str]:
    """vLLM's sleep mode (weights offloaded, KV cache freed, the process kept) needs CUDA."""
    import torch

    if not torch.cuda.is_available():
        return False, "vLLM sleep mode needs a CUDA GPU; on CPU a replica is either running or stopped"
    return True, ""


def on_cpu() -> bool:
    """Whether vLLM runs on the CPU platform in this process (no GPU it can use)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def choose_dtype(args: Any) -> tuple[CpuCaps | None, str]:
    """On a CPU host, set the engine's dtype to one whose kernels this host can run (see
    cpu_caps.cpu_engine_dtype); the host's capabilities and why the dtype changed (or "")."""
    if not on_cpu():
        return None, ""
    caps = host_caps()
    dtype, why = cpu_engine_dtype(getattr(args, "dtype", None), caps)
    if dtype is not None:
        args.dtype = dtype
    if why:
        logger.warning("raygpu: %s", why)
    return caps, why


@dataclass
class EngineDeath:
    """How an engine that stopped serving ended: its process's exit code and what it means."""

    exitcode: int | None
    message: str


def import_vllm() -> None:
    """Import what starting a server needs (a warm worker does this ahead of its replica)."""
    from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state  # noqa: F401
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client_from_engine_args  # noqa: F401
    from vllm.entrypoints.launchers.app import build_app  # noqa: F401
    from vllm.entrypoints.launchers.cli_args import make_arg_parser  # noqa: F401


# How long a start waits for a warm engine core still importing before spawning its own.
WARM_CORE_WAIT_S = 60.0
# How long vLLM's app may take to stop a request whose caller left before it is cancelled.
DISCONNECT_GRACE_S = 2.0


async def stop_app_task(task: asyncio.Task, grace_s: float) -> None:
    """Let an ASGI app task that has seen http.disconnect end by itself within `grace_s`, then
    cancel it; the task is cancelled at once if this coroutine is cancelled while it waits."""
    try:
        await asyncio.wait({task}, timeout=grace_s)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5.0)


class _NoServer:
    should_exit = False


def engine_core_processes(engine: Any) -> list[Any]:
    """The engine-core processes of an AsyncLLM (vLLM's internals; none where it has no such list)."""
    try:
        manager = engine.engine_core.resources.engine_manager
        return list(getattr(manager, "processes", []) or [])
    except AttributeError:
        return []


@dataclass
class ResponseStart:
    status: int
    headers: list[tuple[str, str]]


class VllmServer:
    """vLLM's OpenAI server (FastAPI app + AsyncLLM engine) inside this process."""

    def __init__(
        self,
        app: Any,
        engine: Any,
        exit_stack: contextlib.AsyncExitStack,
        model_name: str,
        caps: CpuCaps | None = None,
        dtype_note: str = "",
    ):
        # engine start phases a warm engine-core process reported (name -> time); empty otherwise
        self.engine_phases: dict[str, float] = WARM_CORES.last_phases() if WARM_CORES.handed else {}
        self.caps = caps  # the CPU host's capabilities (None on a GPU host)
        self.dtype = str(engine.model_config.dtype).removeprefix("torch.")
        self.dtype_note = dtype_note  # why raygpu chose the dtype, when it did
        self.app = app
        self.engine = engine
        self._exit_stack = exit_stack
        self.model_name = model_name
        self.asleep = False
        self.cancelled = 0  # requests whose caller went away before the response ended

    @classmethod
    async def start(
        cls,
        model: str,
        served_model_name: str | None = None,
        task: str = "generate",
        engine_args: dict[str, Any] | None = None,
        sleep_mode: bool = False,
        take_warm_core: bool = True,
    ) -> "VllmServer":
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client_from_engine_args
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        argv = ["--model", model]
        if served_model_name:
            argv += ["--served-model-name", served_model_name]
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
        for key, value in (engine_args or {}).items():
            name = key.replace("-", "_")
            if not hasattr(args, name):
                raise ValueError(f"unknown vLLM engine argument {key!r} (see `vllm serve --help`)")
            setattr(args, name, value)
        if task == "embed":
            args.runner = "pooling"
        if sleep_mode:
            supported, reason = sleep_mode_supported()
            if not supported:
                raise ValueError(reason)
            args.enable_sleep_mode = True
        args.disable_uvicorn_access_log = True
        caps, dtype_note = choose_dtype(args)
        if not take_warm_core:
            # a core started before this replica's environment (its secrets) was set: not this engine's
            WARM_CORES.close_waiting()
        elif WARM_CORES.alive_count() and WARM_CORES.wait_ready(WARM_CORE_WAIT_S):
            # this process started a warm engine core ahead (a warm worker): the engine takes it
            if not WARM_CORES.install():
                logger.warning("raygpu: warm vLLM engine cores unused: %s", WARM_CORES.reason)
        stack = contextlib.AsyncExitStack()
        try:
            engine = await stack.enter_async_context(
                build_async_engine_client_from_engine_args(AsyncEngineArgs.from_cli_args(args))
            )
            supported_tasks = await engine.get_supported_tasks()
            app = build_app(args, supported_tasks, engine.model_config)
            await init_app_state(engine, app.state, args, supported_tasks)
            # vLLM's handlers of a dead engine ask the uvicorn server that would run the app to
            # stop: here there is none, and the replica reports the death itself (engine_death)
            app.state.server = _NoServer()
        except BaseException:
            await stack.aclose()
            raise
        return cls(app, engine, stack, served_model_name or model, caps, dtype_note)

    async def request(
        self,
        method: str,
        path: str,
        query: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> AsyncIterator[ResponseStart | bytes]:
        """Run one HTTP request through vLLM's app: yields a ResponseStart, then body chunks."""
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method.upper(),
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or [])],
            "client": ("127.0.0.1", 0),
            "server": ("raygpu", 80),
            "app": self.app,
        }
        messages: asyncio.Queue = asyncio.Queue()
        disconnected = asyncio.Event()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                await messages.put(None)

        task = asyncio.get_running_loop().create_task(run())
        completed = False
        try:
            while True:
                message = await messages.get()
                if message is None:
                    completed = True
                    break
                if message["type"] == "http.response.start":
                    yield ResponseStart(
                        message["status"], [(k.decode(), v.decode()) for k, v in message.get("headers", [])]
                    )
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield message["body"]
                    if not message.get("more_body", False):
                        completed = True
                        break
        finally:
            disconnected.set()  # vLLM's own handlers see the caller gone
            if not completed and not task.done():
                # The caller went away mid-response (streaming or not). vLLM's handlers watch for
                # http.disconnect and cancel their generation, which aborts the engine requests:
                # cancelling the ASGI task first would stop only the outer wrapper
                # (`with_cancellation` runs the handler in a task of its own) and leave the engine
                # generating for nobody. The app gets a moment to stop itself, then is cancelled.
                self.cancelled += 1
                await stop_app_task(task, grace_s=DISCONNECT_GRACE_S)
            elif not task.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=5.0)
        if completed:
            await task

    def engine_death(self) -> EngineDeath | None:
        """None while the engine serves; once it died, its exit code and what that means."""
        if not self.engine.errored:
            return None
        exitcode = None
        for process in engine_core_processes(self.engine):
            code = process.exitcode
            if code not in (None, 0):
                exitcode = code
                break
        return EngineDeath(exitcode, explain_engine_death(exitcode, self.caps, self.caps is not None))

    def engine_core_pids(self) -> list[int]:
        return [p.pid for p in engine_core_processes(self.engine) if p.pid is not None]

    def unfinished_requests(self) -> int:
        """Requests the engine is still generating or has queued (0 once it is dead)."""
        try:
            return int(self.engine.get_num_unfinished_requests())
        except Exception:
            if self.engine.errored:
                return 0
            raise

    async def sleep(self, level: int = 1) -> float:
        started = time.perf_counter()
        await self.engine.sleep(level)
        self.asleep = True
        return time.perf_counter() - started

    async def wake_up(self) -> float:
        started = time.perf_counter()
        await self.engine.wake_up()
        self.asleep = False
        return time.perf_counter() - started

    async def close(self) -> None:
        await self._exit_stack.aclose()
