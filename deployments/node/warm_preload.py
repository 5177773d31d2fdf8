"""Imported by every new Ray worker process of a raygpu cluster (Ray's `preload_python_modules`).

Workers whose runtime env sets RAYGPU_WARM_WORKER (the warm pool's, and replicas' that may take a
warm worker) import the heavy modules a replica needs in a background thread, once they have sat
idle for a moment: a worker idling in the pool gets them ready, while one started on demand for a
replica is busy by then and imports only what that replica needs itself. Every other worker
returns at once.
"""

import os
import threading
import time

from deployments.constants import WARM_READY_DIR

PRELOADED_AT: float | None = None
IDLE_BEFORE_PRELOAD_S = 1.0
WARM_CORE_READY_S = 300.0  # a vllm worker waits this long at most for its engine core to import


def _idle() -> bool:
    """Ray titles a worker process `ray::IDLE` until it runs a task or an actor."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().startswith(b"ray::IDLE")
    except OSError:
        return False


def _preload() -> None:
    global PRELOADED_AT
    time.sleep(IDLE_BEFORE_PRELOAD_S)
    if not _idle():
        return  # started on demand for a replica: no preload to compete with it
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
    except Exception:  # a replica imports what it needs itself
        return
    PRELOADED_AT = time.time()
    try:
        from deployments.engines.private_dirs import private_dir

        private_dir(WARM_READY_DIR)
        with open(os.path.join(WARM_READY_DIR, str(os.getpid())), "w"):
            pass
    except OSError:
        pass


FLAVOUR = os.environ.get("RAYGPU_WARM_WORKER")
if FLAVOUR in ("torch", "vllm"):
    # Serve's replica module has import cycles inside Ray Serve: imported in a thread while a replica
    # landing on this worker imports it too, one side sees it half-initialised and the replica fails
    # to start. Imported here, before the worker takes any work, it is complete for both.
    from ray.serve._private import replica  # noqa: F401

    threading.Thread(target=_preload, name="raygpu-preload", daemon=True).start()
