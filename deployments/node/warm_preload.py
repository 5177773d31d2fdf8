"""Imported by every new Ray worker process of a raygpu cluster (Ray's `preload_python_modules`).

Workers whose runtime env sets RAYGPU_WARM_WORKER (the warm pool's, and replicas' that may take a
warm worker) import the heavy modules a replica needs in a background thread, once they have sat
idle for a moment: a worker idling in the pool gets them ready, while one started on demand for a
replica is busy by then and imports only what that replica needs itself. Every other worker
returns at once. An `app` worker also holds one unit of an app (RAYGPU_WARM_UNIT): it loads the
unit's code (its imports) and, for a class with `snap=True` enter hooks, creates its instance and
runs those hooks, with CUDA refused; the replica that lands on it adopts the code and instance
(`HELD`, once `HOLD_DONE` is set).
"""

import json
import os
import threading
import time
from typing import Any

from deployments.constants import WARM_APPS_DIR, WARM_READY_DIR

PRELOADED_AT: float | None = None
POOLED_AT: float | None = None  # when the worker was found idle in the pool (before any replica took it)
# The app unit this worker holds: "key", "code", "instance" (a class with snap hooks), or "error"
# (why it holds none).
HELD: dict[str, Any] = {}
HOLD_DONE = threading.Event()
IDLE_BEFORE_PRELOAD_S = 1.0
WARM_CORE_READY_S = 300.0  # a vllm worker waits this long at most for its engine core to import


def _idle() -> bool:
    """Ray titles a worker process `ray::IDLE` until it runs a task or an actor."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().startswith(b"ray::IDLE")
    except OSError:
        return False


def _hold_app() -> bool:
    """Load the unit this worker holds and run its `snap=True` hooks; False when that failed (the
    reason in an error file the pool reads, and in HELD, and the worker marked failed)."""
    from deployments.node.app_workers import env_file_name, node_code_dir, payload_file_name

    key = os.environ.get("RAYGPU_WARM_UNIT", "")
    folder = node_code_dir(WARM_APPS_DIR, os.getppid())
    name = os.path.join(folder, payload_file_name(key))
    HELD["key"] = key
    try:
        import cloudpickle

        from deployments.engines.cuda_guard import cuda_blocked
        from deployments.lifecycle import run_snap_hooks, snap_hook_names

        try:
            with open(name, "rb") as f:
                payload = f.read()
            with open(os.path.join(folder, env_file_name(key))) as f:
                image_env = json.load(f)
        except FileNotFoundError:
            HELD["error"] = "no code for this unit on the node"  # not the pool's: a replica's own worker
            return False
        os.environ.update({str(k): str(v) for k, v in image_env.items()})  # as its replica sets them
        with cuda_blocked(f"importing the code of {key}"):
            code = cloudpickle.loads(payload)
        HELD["code"] = code
        if isinstance(code, type) and snap_hook_names(code):  # a class whose snap hooks run ahead
            with cuda_blocked(f"the constructor of {key}"):
                instance = code()
            run_snap_hooks(instance, guard=cuda_blocked)
            HELD["instance"] = instance
        return True
    except BaseException as exc:
        HELD["error"] = f"{type(exc).__name__}: {exc}"
        try:
            with open(f"{name}.error", "w") as f:
                f.write(HELD["error"])
            _mark(".failed")
        except OSError:
            pass
        return False
    finally:
        HOLD_DONE.set()


def _mark(suffix: str = "") -> None:
    """This worker's marker for the pool: ready (no suffix) or `.failed`."""
    from deployments.engines.private_dirs import private_dir

    private_dir(WARM_READY_DIR)
    with open(os.path.join(WARM_READY_DIR, f"{os.getpid()}{suffix}"), "w"):
        pass


def _preload() -> None:
    global PRELOADED_AT, POOLED_AT
    time.sleep(IDLE_BEFORE_PRELOAD_S)
    if not _idle():
        HOLD_DONE.set()
        return  # started on demand for a replica: no preload to compete with it
    POOLED_AT = time.time()
    try:
        import torch  # noqa: F401  (the largest import of a model replica)

        from deployments.engines import torch_engine  # noqa: F401
        from deployments.replicas import function, torch_model  # noqa: F401

        if FLAVOUR == "vllm":
            from deployments.engines.vllm_warm_core import WARM_CORES

            WARM_CORES.prestart(1)  # an engine-core process importing vLLM beside this worker
            from deployments.engines.vllm_engine import import_vllm
            from deployments.replicas import vllm  # noqa: F401

            import_vllm()
            from deployments.engines.cpu_caps import host_caps

            host_caps()  # which CPU kernels the engine may use, probed once per node
            # the worker counts as warm once its engine core is ready too
            WARM_CORES.wait_ready(WARM_CORE_READY_S)
        if FLAVOUR == "app" and not _hold_app():
            return
    except Exception:  # a replica imports what it needs itself
        HOLD_DONE.set()
        return
    PRELOADED_AT = time.time()
    try:
        _mark()
    except OSError:
        pass


FLAVOUR = os.environ.get("RAYGPU_WARM_WORKER")
if FLAVOUR not in ("torch", "vllm", "app"):
    HOLD_DONE.set()
else:
    # Serve's replica module has import cycles inside Ray Serve: imported in a thread while a replica
    # landing on this worker imports it too, one side sees it half-initialised and the replica fails
    # to start. Imported here, before the worker takes any work, it is complete for both.
    from ray.serve._private import replica  # noqa: F401

    threading.Thread(target=_preload, name="raygpu-preload", daemon=True).start()
