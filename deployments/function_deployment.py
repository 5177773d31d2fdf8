"""The Serve deployment that runs one user function or class on its replicas.

The gateway calls `FunctionReplica.__call__(method, body)`; the replica validates the keyword
arguments against the type hints and answers `(status, payload)`: user code never decides an HTTP
status and never leaves a caller hanging.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import cloudpickle
from pydantic_core import to_jsonable_python
from ray import serve

from deployments import constants
from deployments.lifecycle import run_enter_hooks, run_exit_hooks
from deployments.signature import ArgumentError, arguments_model, validate_arguments
from deployments.spec import FunctionSpec
from deployments.replica_base import ReplicaBase

logger = logging.getLogger("ray.serve")


def error_payload(error_type: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def _jsonable_fallback(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return value.tolist()
    raise TypeError(f"a value of type {type(value).__name__} is not JSON-serializable")


def unwrap_target(target: Any) -> Any:
    """The plain function behind an SDK `Function`, or the class itself."""
    return getattr(target, "fn", target) if not inspect.isclass(target) else target


class FunctionReplica(ReplicaBase):
    """One replica of a user function or class."""

    async def __init__(self, app: str, version: int, spec_json: str, payload: bytes, accelerator: str | None,
                       metered: bool, *sibling_deployments: Any):
        self._begin_start(app, version, spec_json, accelerator, metered)
        self.started_at = self.phases.replica_init
        self._executor = ThreadPoolExecutor(
            max_workers=self.spec.max_inputs, thread_name_prefix=f"raygpu-{self.spec.name}"
        )
        self.instance: Any = None
        self.callables: dict[str | None, Callable[..., Any]] = {}
        self.models: dict[str | None, Any] = {}
        self.startup_error: str | None = None
        try:
            self._load_user_code(payload)
        except Exception as exc:
            # A replica whose user code cannot start answers every call with the reason (500)
            # rather than crash-looping while callers wait.
            self.startup_error = f"{type(exc).__name__}: {exc}"
            logger.error("raygpu: %s/%s failed to start: %s", app, self.spec.name,
                         "".join(traceback.format_exception(exc)))
        self.phases.mark("engine_init")
        self.phases.mark("ready")
        logger.info("raygpu: %s/%s v%d ready (pid %d, %s)", app, self.spec.name, version, os.getpid(),
                    self.phases.describe())
        self.meter.event("ready")

    def _load_user_code(self, payload: bytes) -> None:
        target = unwrap_target(cloudpickle.loads(payload))
        if self.spec.kind == "class":
            self.instance = target()
            run_enter_hooks(self.instance)
            for name in self.spec.methods:
                self.callables[name] = getattr(self.instance, name)
        else:
            self.callables[None] = target
        self.models = {name: arguments_model(fn) for name, fn in self.callables.items()}

    async def __call__(self, method: str | None, body: Any, bytes_in: int = 0,
                       headers: dict[str, str] | None = None) -> tuple[int, bytes, int, dict[str, str]]:
        """Run one call; answer (HTTP status, JSON body, version, extra response headers)."""
        started = time.perf_counter()
        self.meter.call_started()
        status = 500
        encoded = b""
        try:
            status, payload = await self._invoke(method, body)
            try:
                encoded = json.dumps(payload, separators=(",", ":")).encode()
            except (TypeError, ValueError) as exc:
                status = 500
                encoded = json.dumps(error_payload(
                    "SerializationError", f"{self.spec.name} returned a value that cannot be sent as JSON: {exc}"
                )).encode()
            return status, encoded, self.version, {}
        finally:
            self.meter.call_finished(status, time.perf_counter() - started, bytes_in, len(encoded))
            self.phases.first_response()

    async def _invoke(self, method: str | None, body: Any) -> tuple[int, Any]:
        if self.startup_error is not None:
            return 500, error_payload(
                "StartupError",
                f"{self.spec.name} could not start on its replica: {self.startup_error} "
                f"(fix it and redeploy; `raygpu logs {self.app}/{self.spec.name}` has the traceback)",
            )
        fn = self.callables.get(method)
        if fn is None:
            known = ", ".join(m for m in self.callables if m) or "(none)"
            return 404, error_payload("NotFound", f"{self.spec.name} has no method {method!r}; methods: {known}")
        try:
            arguments = validate_arguments(self.models[method], body)
        except ArgumentError as exc:
            return 422, error_payload("ValidationError", str(exc), exc.errors)
        self._ongoing += 1
        try:
            if inspect.iscoroutinefunction(fn):
                result = await asyncio.wait_for(fn(**arguments), timeout=self.spec.timeout)
            else:
                loop = asyncio.get_running_loop()
                future = loop.run_in_executor(self._executor, lambda: fn(**arguments))
                result = await asyncio.wait_for(future, timeout=self.spec.timeout)
        except asyncio.TimeoutError:
            return 504, error_payload(
                "Timeout",
                f"{self.spec.name} did not finish within its timeout of {self.spec.timeout:g} s; "
                "raise `timeout=` in the decorator if it needs longer",
            )
        except Exception as exc:
            logger.warning("raygpu: %s raised %s", self.spec.name, "".join(traceback.format_exception(exc)))
            return 500, error_payload(type(exc).__name__, str(exc))
        finally:
            self._ongoing -= 1
        try:
            return 200, to_jsonable_python(result, fallback=_jsonable_fallback)
        except Exception as exc:
            return 500, error_payload(
                "SerializationError", f"{self.spec.name} returned a value that cannot be sent as JSON: {exc}"
            )

    async def replica_info(self) -> dict[str, Any]:
        import ray

        return {
            "pid": os.getpid(),
            "version": self.version,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "started_at": self.started_at,
            "ongoing": self._ongoing,
        }

    def __del__(self) -> None:
        self._stop_metering()
        if getattr(self, "instance", None) is not None:
            try:
                run_exit_hooks(self.instance)
            except Exception:
                logger.exception("raygpu: exit hook of %s failed", self.spec.name)
        if hasattr(self, "_executor"):
            self._executor.shutdown(wait=False, cancel_futures=True)


def deployment_options(
    app: str,
    spec: FunctionSpec,
    accelerator: str | None,
    store_actor: str,
    store_namespace: str,
) -> dict[str, Any]:
    """Serve options of one function's deployment: resources, autoscaling, queue bounds."""
    from autoscaling.serve_adapter import serve_autoscaling_config

    actor_options: dict[str, Any] = {"num_cpus": spec.cpu}
    request = spec.gpu_request
    if request is not None:
        actor_options["num_gpus"] = request.count
        if accelerator:
            actor_options["accelerator_type"] = accelerator
    if spec.memory:
        actor_options["memory"] = spec.memory * 1024 * 1024
    from deployments.warm_pool import runtime_env_for

    runtime_env = spec.image.to_runtime_env() or runtime_env_for(spec.image.to_runtime_env())
    if runtime_env:
        actor_options["runtime_env"] = runtime_env
    return {
        "name": spec.name,
        "ray_actor_options": actor_options,
        "max_ongoing_requests": spec.max_inputs,
        # Serve's router enforces the queue bound in the gateway's process; at least one request
        # must be able to wait, or a function at zero replicas could never start.
        "max_queued_requests": max(spec.max_queue, 1),
        "graceful_shutdown_timeout_s": min(spec.timeout, constants.MAX_GRACEFUL_SHUTDOWN_S),
        "graceful_shutdown_wait_loop_s": 0.5,
        "autoscaling_config": serve_autoscaling_config(
            app=app,
            function=spec.name,
            min_replicas=spec.min_containers,
            max_replicas=spec.max_containers,
            buffer_replicas=spec.buffer_containers,
            inputs_per_replica=spec.max_inputs,
            idle_window_s=spec.scaledown_window,
            start_time_s=constants.EXPECTED_START_TIME_S,
            store_actor=store_actor,
            store_namespace=store_namespace,
            metrics_interval_s=constants.METRICS_INTERVAL_S,
            look_back_period_s=constants.LOOK_BACK_PERIOD_S,
        ),
    }


def replica_class(kind: str) -> type:
    """The Serve deployment class that runs a unit of this kind."""
    if kind == "torch":
        from deployments.model_deployment import TorchModelReplica

        return TorchModelReplica
    if kind == "vllm":
        from deployments.vllm_deployment import VllmReplica

        return VllmReplica
    return FunctionReplica


def build_app_application(
    app: str,
    version: int,
    units: list[tuple[FunctionSpec, bytes, str | None]],
    store_actor: str,
    store_namespace: str,
    metered: bool = True,
) -> Any:
    """One Serve application holding a deployment per function or class of a user app.

    Serve needs a single ingress: the first deployment takes the others as (unused) constructor
    arguments, which is how Serve learns to deploy them all in the same application.
    """
    bound = []
    for spec, payload, accelerator in units:
        options = deployment_options(app, spec, accelerator, store_actor, store_namespace)
        deployment = serve.deployment(replica_class(spec.kind)).options(**options)
        bound.append((deployment, (app, version, spec.model_dump_json(), payload, accelerator, metered)))
    ingress_deployment, ingress_args = bound[0]
    siblings = [deployment.bind(*args) for deployment, args in bound[1:]]
    return ingress_deployment.bind(*ingress_args, *siblings)
