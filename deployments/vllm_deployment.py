"""The Serve deployment of a vLLM engine: the gateway forwards `/{app}/{name}/v1/...` here and
streams back what vLLM's own OpenAI server answers. With sleep mode (CUDA only) an idle replica
offloads its weights and frees its KV cache, a warm tier between running and zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import traceback
from typing import Any, AsyncIterator

from deployments.function_deployment import error_payload
from deployments.replica_base import ReplicaBase

logger = logging.getLogger("ray.serve")
# Request headers vLLM sees; the rest (authorization above all) stay at the gateway.
FORWARDED_TO_ENGINE = ("content-type", "accept")


class VllmReplica(ReplicaBase):
    """One replica of an `app.vllm(...)` deployment."""

    async def __init__(self, app: str, version: int, spec_json: str, payload: bytes, accelerator: str | None,
                       metered: bool, *sibling_deployments: Any):
        self._begin_start(app, version, spec_json, accelerator, metered)
        model = self.spec.vllm_model
        self.server: Any = None
        self.startup_error: str | None = None
        self._last_call = time.monotonic()
        self._sleeper: asyncio.Task | None = None
        try:
            from deployments.vllm_engine import VllmServer

            self.phases.mark("imports")
            self.server = await VllmServer.start(model.model, model.served_model_name, model.task,
                                                 model.engine_args, model.sleep_mode)
            self.phases.mark("engine_init")
            if model.sleep_mode:
                self._sleeper = asyncio.get_running_loop().create_task(self._sleep_when_idle())
        except Exception as exc:
            self.startup_error = f"{type(exc).__name__}: {exc}"
            logger.error("raygpu: %s/%s failed to start: %s", app, self.spec.name,
                         "".join(traceback.format_exception(exc)))
        self.phases.mark("ready")
        self.meter.event("ready")
        logger.info("raygpu: %s/%s v%d ready (pid %d, %s)", app, self.spec.name, version, os.getpid(),
                    self.phases.describe())

    async def http(self, method: str, path: str, query: bytes, headers: dict[str, str], body: bytes,
                   bytes_in: int = 0) -> AsyncIterator[Any]:
        """Stream one request through vLLM: first {"status", "headers"}, then body chunks."""
        started = time.perf_counter()
        self.meter.call_started()
        self._ongoing += 1
        self._last_call = time.monotonic()
        status, sent = 500, 0
        try:
            if self.startup_error is not None or self.server is None:
                status = 500
                encoded = json.dumps(error_payload(
                    "StartupError", f"{self.spec.name} could not start its vLLM engine: {self.startup_error} "
                    f"(`raygpu logs {self.app}/{self.spec.name}` has the traceback)")).encode()
                yield {"status": status, "headers": [("content-type", "application/json")]}
                sent += len(encoded)
                yield encoded
                return
            if self.server.asleep:
                woke_in = await self.server.wake_up()
                logger.info("raygpu: %s/%s woke from sleep in %.2f s", self.app, self.spec.name, woke_in)
            forwarded = [(k, v) for k, v in headers.items() if k.lower() in FORWARDED_TO_ENGINE]
            async for item in self.server.request(method, path, query, forwarded, body):
                if isinstance(item, bytes):
                    sent += len(item)
                    yield item
                else:
                    status = item.status
                    yield {"status": item.status,
                           "headers": [(k, v) for k, v in item.headers if k.lower() != "content-length"]}
        finally:
            self._ongoing -= 1
            self._last_call = time.monotonic()
            self.meter.call_finished(status, time.perf_counter() - started, bytes_in, sent)
            self.phases.first_response()

    async def _sleep_when_idle(self) -> None:
        """Offload the engine after half the scaledown window without calls (CUDA only)."""
        idle_s = self.spec.scaledown_window / 2
        while True:
            await asyncio.sleep(1.0)
            if self._ongoing == 0 and not self.server.asleep and time.monotonic() - self._last_call >= idle_s:
                took = await self.server.sleep(level=1)
                logger.info("raygpu: %s/%s asleep after %.0f s idle (%.2f s)", self.app, self.spec.name, idle_s, took)

    async def engine_info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "asleep": bool(self.server and self.server.asleep),
                "start_phases": self.phases.durations(), "startup_error": self.startup_error}

    def __del__(self) -> None:
        self._stop_metering()
        if getattr(self, "_sleeper", None) is not None:
            self._sleeper.cancel()
