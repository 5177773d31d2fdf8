"""The Serve deployment of a vLLM engine: the gateway forwards `/{app}/{name}/v1/...` here and
streams back what vLLM's own OpenAI server answers. With sleep mode (CUDA only) an idle replica
offloads its weights and frees its KV cache, a warm tier between running and zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from deployments.calls.context import context_of
from deployments.engines.model_stage import hold, release, stage, staged_path
from deployments.replicas.base import ReplicaBase, encode_json, error_payload

logger = logging.getLogger(f"ray.serve.{__name__}")
# Request headers vLLM sees; the rest (authorization above all) stay at the gateway.
FORWARDED_TO_ENGINE = ("content-type", "accept")
STAGE_AFTER_S = 5.0  # the longest a first replica waits for its first call before staging its weights
STAGE_FINISH_ON_STOP_S = 60.0  # how long a stopping replica lets a staging under way finish
SSE_DONE = b"data: [DONE]"  # the last event of vLLM's streams
ENGINE_DIED = "EngineDied"


class VllmReplica(ReplicaBase):
    """One replica of an `app.vllm(...)` deployment."""

    async def _load(self, payload: bytes) -> None:
        from deployments.engines.vllm_engine import VllmServer, import_vllm

        model = self.spec.vllm_model
        self._last_call = time.monotonic()
        self._first_call_done = threading.Event()
        import_vllm()  # done already on a warm worker of the vllm flavour
        self.phases.mark("imports")
        # a replica before this one on the node staged the weights in node memory: load from there
        staged = staged_path(model.model)
        # held while this replica runs: the node's sweep does not remove a copy in use
        self._staged, self._staged_use = staged, hold(staged) if staged else None
        self.server = await VllmServer.start(
            str(staged) if staged else model.model,
            model.model_name,
            model.task,
            model.engine_args,
            model.sleep_mode,
            # an engine-core process warmed before the secrets were in this environment lacks them
            take_warm_core=not self.spec.secrets,
        )
        if staged is None:
            self._stager = threading.Thread(
                target=self._stage_after_first_call, args=(model.model,), name="raygpu-model-stage", daemon=True
            )
            self._stager.start()
        else:
            logger.info(
                "raygpu: %s/%s loaded its weights from the node's staged copy %s", self.app, self.spec.name, staged
            )
        for phase, at in sorted(self.server.engine_phases.items(), key=lambda item: item[1]):
            self.phases.mark(phase, at)  # reported by a warm engine-core process
        self.phases.mark("engine_init")
        if model.sleep_mode:
            self._sleeper = asyncio.get_running_loop().create_task(self._sleep_when_idle())

    async def http(
        self, method: str, path: str, query: bytes, headers: dict[str, str], body: bytes, bytes_in: int = 0
    ) -> AsyncIterator[Any]:
        """Stream one request through vLLM: first {"status", "headers"}, then body chunks. An engine
        that died before the call sends it on to the replacement (the gateway resends a draining
        answer); a call the engine was running when it died is not sent again (it may be what killed
        it): it answers 503 EngineDied, or a started stream ends with an EngineDied error event."""
        with self.metered_call(bytes_in, context_of(headers)) as outcome:
            self._last_call = time.monotonic()
            try:
                if self.startup_error is not None:
                    encoded = encode_json(self.startup_error_payload())
                    yield {"status": 500, "headers": [("content-type", "application/json")]}
                    outcome.bytes_out += len(encoded)
                    yield encoded
                    return
                if self._engine_died() is not None:
                    status, payload, _, extra = self.draining_answer()
                    outcome.status = status
                    yield {"status": status, "headers": [("content-type", "application/json"), *extra.items()]}
                    yield payload
                    return
                if self.server.asleep:
                    woke_in = await self.server.wake_up()
                    logger.info("raygpu: %s/%s woke from sleep in %.2f s", self.app, self.spec.name, woke_in)
                forwarded = [(k, v) for k, v in headers.items() if k.lower() in FORWARDED_TO_ENGINE]
                started = False
                try:
                    async with contextlib.aclosing(self.server.request(method, path, query, forwarded, body)) as answer:
                        async for item in answer:
                            if isinstance(item, bytes):
                                if started and item.startswith(SSE_DONE) and self._engine_died() is not None:
                                    event = self._engine_died_event()
                                    outcome.bytes_out += len(event)
                                    yield event
                                outcome.bytes_out += len(item)
                                if item.strip():
                                    self.phases.mark("first_token")  # the first chunk the engine produced
                                yield item
                                continue
                            if item.status >= 500 and self._engine_died() is not None:
                                break  # vLLM's own answer to a dead engine: raygpu's says why, below
                            outcome.status = item.status
                            started = True
                            yield {
                                "status": item.status,
                                "headers": [(k, v) for k, v in item.headers if k.lower() != "content-length"],
                            }
                except Exception:
                    if self._engine_died() is None:
                        raise
                if self._engine_died() is not None and not started:
                    encoded = encode_json(self._engine_died_payload())
                    outcome.status = 503
                    outcome.bytes_out += len(encoded)
                    yield {"status": 503, "headers": [("content-type", "application/json")]}
                    yield encoded
            finally:
                self._last_call = time.monotonic()
                self._first_call_done.set()

    def _engine_died(self) -> Any:
        """The engine's death (see VllmServer.engine_death), once it died: the replica then takes no
        more calls and fails its health check, so Serve replaces it."""
        server = getattr(self, "server", None)
        death = server.engine_death() if server is not None else None
        if death is not None and self.draining is None:
            logger.error("raygpu: %s/%s: %s", self.app, self.spec.name, death.message)
            self.begin_draining(death.message)
        return death

    def _engine_died_payload(self) -> dict[str, Any]:
        return error_payload(ENGINE_DIED, f"{self.spec.name}: {self._engine_died().message}")

    def _engine_died_event(self) -> bytes:
        return b"data: " + encode_json(self._engine_died_payload()) + b"\n\n"

    async def check_health(self) -> None:
        self._engine_died()
        await super().check_health()

    async def start_check(self) -> str | None:
        """One token through the engine (an embedding for embedding models): a deploy's start check
        catches an engine that loads but cannot run a forward pass on this host."""
        if self.startup_error is not None:
            return self.startup_error
        model = self.spec.vllm_model
        name = model.model_name or model.model
        if model.task == "embed":
            path, request = "/v1/embeddings", {"model": name, "input": "raygpu start check"}
        else:
            path, request = "/v1/completions", {"model": name, "prompt": "raygpu", "max_tokens": 1}
        status, answer = 0, b""
        try:
            async for item in self.http("POST", path, b"", {"content-type": "application/json"}, encode_json(request)):
                if isinstance(item, dict):
                    status = item["status"]
                else:
                    answer += item
        except Exception as exc:
            return f"the engine failed its first forward pass ({type(exc).__name__}: {exc})"
        death = self._engine_died()
        if death is not None:
            return f"the engine died on its first forward pass: {death.message}"
        if status != 200:
            return f"the engine answered its first request with HTTP {status}: {answer[:300].decode(errors='replace')}"
        return None

    def _stage_after_first_call(self, model: str) -> None:
        """Stage the weights in node memory for the replicas after this one, once the call that
        started it is answered (or a few seconds passed): the copy reads what the engine just read."""
        self._first_call_done.wait(timeout=STAGE_AFTER_S)
        try:
            staged = stage(model)
        except OSError as exc:
            logger.warning("raygpu: %s/%s: could not stage %s in node memory: %s", self.app, self.spec.name, model, exc)
            return
        if staged is not None:
            logger.info("raygpu: %s/%s staged %s for later replicas on this node", self.app, self.spec.name, staged)

    async def _sleep_when_idle(self) -> None:
        """Offload the engine after half the scaledown window without calls (CUDA only)."""
        idle_s = self.spec.scaledown_window / 2
        while True:
            await asyncio.sleep(1.0)
            if self._ongoing == 0 and not self.server.asleep and time.monotonic() - self._last_call >= idle_s:
                took = await self.server.sleep(level=1)
                logger.info("raygpu: %s/%s asleep after %.0f s idle (%.2f s)", self.app, self.spec.name, idle_s, took)

    async def engine_info(self) -> dict[str, Any]:
        server = getattr(self, "server", None)
        death = self._engine_died()
        return {
            "pid": os.getpid(),
            "engine_core_pids": server.engine_core_pids() if server else [],
            "dtype": server.dtype if server else None,
            "dtype_note": server.dtype_note if server else "",
            "engine_died": death.message if death else None,
            "asleep": bool(server and server.asleep),
            "unfinished_requests": server.unfinished_requests() if server else 0,
            "cancelled_requests": server.cancelled if server else 0,
            "start_phases": self.phases.durations(),
            "startup_error": self.startup_error,
        }

    def _release(self) -> None:
        if getattr(self, "_sleeper", None) is not None:
            self._sleeper.cancel()
        if getattr(self, "_staged_use", None) is not None:
            release(self._staged_use, self._staged)
            self._staged_use = None
        stager = getattr(self, "_stager", None)
        if stager is not None:  # a staging under way finishes (bounded): a stop would waste its read
            self._first_call_done.set()
            stager.join(timeout=STAGE_FINISH_ON_STOP_S)
