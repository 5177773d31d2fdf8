"""Warm vLLM engine-core processes: started ahead of any replica, with vLLM and torch already
imported, and handed to the next engine that starts in this process instead of a fresh `spawn`
(which imports everything again: most of a small model's start on a CPU host).

Everything here that touches vLLM internals is in this module: `CoreEngineProcManager` takes its
multiprocessing context from `vllm.v1.engine.utils.get_mp_context` and starts
`EngineCoreProc.run_engine_core` with keyword arguments; a warm process receives that target,
those arguments and the starting process's environment over a pipe and runs them. `capability()`
checks the pinned vLLM still looks like that; anything else (another version, a tensor queue that
only a real spawn can hand over, no warm process ready) takes vLLM's own path. A warm process also
reports when it passes the engine's start phases (weights, KV cache, warm-up) over the same pipe.
Imports vllm only inside functions, never Ray.
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)

# vLLM versions whose engine-core launch this module was checked against.
SUPPORTED_VLLM_PREFIXES = ("0.32.",)
# Imported by a warm process before it is handed an engine: what a fresh engine core imports first.
PRELOADED_MODULES = (
    "torch",
    "vllm.v1.engine.core",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.worker.cpu_worker",
    "vllm.v1.worker.gpu_worker",
    "vllm.model_executor.model_loader",
    "vllm.model_executor.models.llama",
)
# Engine start phases a warm process reports, in order.
ENGINE_PHASES = ("engine_process", "weights", "kv_cache", "warmup")


def capability() -> tuple[bool, str]:
    """Whether this vLLM starts its engine cores the way the hand-over expects."""
    try:
        import vllm
        from vllm.v1.engine import utils as engine_utils
        from vllm.v1.engine.core import EngineCore, EngineCoreProc
        from vllm.v1.executor.abstract import Executor
    except Exception as exc:
        return False, f"vLLM's engine modules did not import ({type(exc).__name__}: {exc})"
    version = getattr(vllm, "__version__", "")
    if not version.startswith(SUPPORTED_VLLM_PREFIXES):
        return False, f"vLLM {version} is not one the warm engine core was checked against {SUPPORTED_VLLM_PREFIXES}"
    if not callable(getattr(engine_utils, "get_mp_context", None)):
        return False, "vllm.v1.engine.utils no longer takes its context from get_mp_context"
    manager = getattr(engine_utils, "CoreEngineProcManager", None)
    if manager is None or "get_mp_context()" not in inspect.getsource(manager.__init__):
        return False, "CoreEngineProcManager no longer starts engine cores through get_mp_context()"
    if not callable(getattr(EngineCoreProc, "run_engine_core", None)):
        return False, "EngineCoreProc.run_engine_core is gone"
    for name in ("initialize_from_config", "compile_or_warm_up_model"):
        if not callable(getattr(Executor, name, None)):
            return False, f"Executor.{name} is gone"
    if not callable(getattr(EngineCore, "__init__", None)):
        return False, "EngineCore changed"
    return True, ""


# --- the warm process ---------------------------------------------------------------------------
PARENT_CHECK_S = 1.0  # how often a warm process looks whether the process that started it is gone


def _die_with_parent() -> None:
    """Exit once the process that started this one is gone, however it went (a replica killed
    outright would otherwise leave its engine core running for nobody)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="raygpu-parent-watch", daemon=True).start()


def _warm_main(conn: Connection, modules: tuple[str, ...]) -> None:
    """A warm process: import, say so, wait for an engine to run (or for the pipe to close)."""
    import importlib

    _die_with_parent()

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:
            pass  # the engine imports what it needs itself
    conn.send(("ready", os.getpid(), time.time()))
    try:
        handed = conn.recv()
    except (EOFError, OSError):
        return  # the process that started it is gone
    if handed is None:
        return
    target, kwargs, environ, name = handed
    os.environ.clear()
    os.environ.update(environ)
    multiprocessing.current_process().name = name
    _report_phases(conn)
    target(**kwargs)


def _report_phases(conn: Connection) -> None:
    """Send ("phase", name, time) as the engine passes its start phases."""
    from vllm.v1.engine.core import EngineCore
    from vllm.v1.executor.abstract import Executor

    lock = threading.Lock()

    def send(phase: str) -> None:
        try:
            with lock:
                conn.send(("phase", phase, time.time()))
        except Exception:
            pass

    def after(owner: type, method: str, phase: str, before: str | None = None) -> None:
        original = getattr(owner, method)

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            if before is not None:
                send(before)
            result = original(self, *args, **kwargs)
            send(phase)
            return result

        setattr(owner, method, wrapped)

    init = EngineCore.__init__

    def engine_init(self: Any, *args: Any, **kwargs: Any) -> None:
        send("engine_process")
        # EngineCore(vllm_config, executor_class, log_stats, ...)
        executor_class = kwargs.get("executor_class", args[1] if len(args) > 1 else None)
        if isinstance(executor_class, type) and not getattr(executor_class, "_raygpu_timed", False):
            executor_class._raygpu_timed = True
            after(executor_class, "__init__", "weights")
        init(self, *args, **kwargs)

    EngineCore.__init__ = engine_init  # type: ignore[method-assign]
    after(Executor, "initialize_from_config", "kv_cache")
    after(Executor, "compile_or_warm_up_model", "warmup")


# --- the starting side ----------------------------------------------------------------------------
class WarmCore:
    """One warm process and its pipe."""

    def __init__(self, modules: tuple[str, ...] = PRELOADED_MODULES):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_warm_main, args=(child, modules), name="raygpu-warm-engine-core", daemon=False
        )
        self.started_at = time.time()
        self.process.start()
        child.close()
        self.ready_at: float | None = None
        self.phases: dict[str, float] = {}
        self.handed_at: float | None = None  # when an engine start took it
        self.started = False  # whether the engine was handed over (vLLM started the process)

    def ready(self) -> bool:
        if self.ready_at is None and self.process.is_alive():
            try:
                if self.conn.poll():
                    kind, _pid, at = self.conn.recv()
                    if kind == "ready":
                        self.ready_at = at
            except (EOFError, OSError):
                return False
        return self.ready_at is not None and self.process.is_alive()

    def hand_over(self, target: Any, kwargs: dict[str, Any], name: str) -> None:
        self.started = True
        self.conn.send((target, kwargs, dict(os.environ), name))
        threading.Thread(target=self._read_phases, name="raygpu-engine-phases", daemon=True).start()

    def _read_phases(self) -> None:
        while True:
            try:
                kind, phase, at = self.conn.recv()
            except (EOFError, OSError):
                return
            if kind == "phase":
                self.phases.setdefault(phase, at)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except Exception:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()


class HandedProcess:
    """What vLLM's process manager holds for an engine core run by a warm process: `start()`
    hands the engine over; everything else is the warm process itself."""

    def __init__(self, warm: WarmCore, target: Any, name: str, kwargs: dict[str, Any]):
        self._warm = warm
        self._target = target
        self._kwargs = kwargs
        self.name = name

    def start(self) -> None:
        self._warm.hand_over(self._target, self._kwargs, self.name)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._warm.process, attribute)


# A warm process taken for an engine start that vLLM has not started within this is an orphan.
HANDOFF_GRACE_S = 60.0
MAX_HANDED = 8  # handed processes remembered (each engine of the process's life took one)


class WarmCores:
    """This process's warm engine cores: started ahead (`prestart`), taken by the next engine."""

    def __init__(self) -> None:
        self._cores: list[WarmCore] = []
        self._lock = threading.Lock()
        self.installed = False
        self.reason = ""
        self.handed: list[WarmCore] = []
        self.fallbacks = 0
        self.closed_unadopted = 0  # warm processes closed because no engine took them over

    def close_waiting(self) -> int:
        """Close the warm processes no engine has taken (this vLLM cannot hand over to them)."""
        with self._lock:
            waiting, self._cores = self._cores, []
        for core in waiting:
            core.close()
        self.closed_unadopted += len(waiting)
        return len(waiting)

    def reap(self, now: float | None = None) -> None:
        """Close handed processes whose engine never started within HANDOFF_GRACE_S (vLLM's launch
        failed after it took one: nothing else would ever close it), and forget those that ended;
        the newest handed one stays (its start phases are read)."""
        now = time.time() if now is None else now
        kept: list[WarmCore] = []
        for core in self.handed:
            if not core.started and core.handed_at is not None and now - core.handed_at > HANDOFF_GRACE_S:
                core.close()
                self.closed_unadopted += 1
            elif core.process.is_alive() or core is self.handed[-1]:
                kept.append(core)
        self.handed = kept[-MAX_HANDED:]

    def prestart(self, count: int = 1) -> int:
        with self._lock:
            self._cores = [c for c in self._cores if c.process.is_alive()]
            missing = max(0, count - len(self._cores))
            for _ in range(missing):
                self._cores.append(WarmCore())
            return missing

    def take(self) -> WarmCore | None:
        with self._lock:
            for core in self._cores:
                if core.ready():
                    self._cores.remove(core)
                    return core
        return None

    def ready_count(self) -> int:
        with self._lock:
            return sum(1 for c in self._cores if c.ready())

    def alive_count(self) -> int:
        """Warm processes ready or still importing."""
        with self._lock:
            return sum(1 for c in self._cores if c.process.is_alive())

    def wait_ready(self, timeout_s: float) -> bool:
        """Until one warm process is ready (a start that found one importing waits for it: a
        fresh spawn would import as long, and compete with it for the CPU)."""
        deadline = time.monotonic() + timeout_s
        while not self.ready_count():
            if not self.alive_count() or time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def install(self) -> bool:
        """Route vLLM's engine-core starts in this process through these warm processes; False,
        with `reason`, when this vLLM is not one the hand-over supports."""
        global _handing
        supported, reason = capability()
        if not supported:
            self.reason = reason
            self.close_waiting()  # prestarted for an engine that will never take them
            return False
        _patch_engine_launch()
        _handing = self
        self.installed = True
        return True

    def process(self, target: Any, name: str | None, kwargs: dict[str, Any]) -> HandedProcess | None:
        """A warm process for this engine core, or None (vLLM then spawns one as usual)."""
        if kwargs.get("tensor_queue") is not None:  # a queue only a real spawn can hand over
            self.fallbacks += 1
            return None
        warm = self.take()
        if warm is None:
            self.fallbacks += 1
            return None
        warm.handed_at = time.time()
        self.reap()
        self.handed.append(warm)
        return HandedProcess(warm, target, name or "EngineCore", kwargs)

    def last_phases(self, wait_s: float = 2.0) -> dict[str, float]:
        """Start phases (name -> time) the last engine handed to a warm process reported (waiting
        up to `wait_s` for the last of them to be read off its pipe)."""
        if not self.handed:
            return {}
        core = self.handed[-1]
        deadline = time.monotonic() + wait_s
        while ENGINE_PHASES[-1] not in core.phases and time.monotonic() < deadline and core.process.is_alive():
            time.sleep(0.01)
        return dict(core.phases)


_handing: WarmCores | None = None  # the set whose processes this process's engines take
_patched = False


def _patch_engine_launch() -> None:
    """Give vLLM's engine-core launcher a context whose engine-core processes may be warm ones
    (once per process; the context asks `_handing` at each start)."""
    global _patched
    if _patched:
        return
    from vllm.v1.engine import utils as engine_utils
    from vllm.v1.engine.core import EngineCoreProc

    original = engine_utils.get_mp_context

    class HandingContext:
        """vLLM's multiprocessing context, whose engine-core processes may be warm ones."""

        def __init__(self, real: Any):
            self._real = real

        def Process(self, target: Any = None, name: str | None = None, kwargs: Any = None, **rest: Any) -> Any:
            kwargs = dict(kwargs or {})
            if target is EngineCoreProc.run_engine_core and not rest and _handing is not None:
                handed = _handing.process(target, name, kwargs)
                if handed is not None:
                    return handed
            return self._real.Process(target=target, name=name, kwargs=kwargs, **rest)

        def __getattr__(self, attribute: str) -> Any:
            return getattr(self._real, attribute)

    engine_utils.get_mp_context = lambda: HandingContext(original())
    _patched = True


WARM_CORES = WarmCores()
