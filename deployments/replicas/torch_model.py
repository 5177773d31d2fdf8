"""Replicas of PyTorch models: weights through the node's cache onto a module built on the meta
device, dynamic batching, several models per replica (LRU, picked per request by the
`x-raygpu-model` header) and weights replaced live when new ones are pushed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cloudpickle

from deployments import constants
from deployments.calls.context import context_of
from deployments.calls.json_arguments import decoded
from deployments.errors import ERROR_SOURCE_HEADER
from deployments.node.weight_cache import load_cached
from deployments.replicas.base import ReplicaBase, encode_json, error_payload
from deployments.store.actor import get_store

logger = logging.getLogger(f"ray.serve.{__name__}")


class TorchModelReplica(ReplicaBase):
    """One replica of a `app.torch_model(...)` deployment."""

    async def _load(self, payload: bytes) -> None:
        import torch

        from deployments.engines import torch_engine

        self.model_spec = self.spec.torch_model
        self.engine = torch_engine
        self.phases.mark("imports")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.definition = cloudpickle.loads(payload)
        self.store = get_store()
        self.weights: dict[str, dict[str, Any]] = await self.store.current_weights.remote(self.app, self.spec.name)
        self._build_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raygpu-weights")
        self.slots = torch_engine.ModelSlots(self.model_spec.max_models, self._load_model)
        self.batcher = torch_engine.DynamicBatcher(
            self._run_batch, self.model_spec.max_batch_size, self.model_spec.batch_wait_timeout_s
        )
        await self.slots.get(self.model_spec.default_model)
        self._watch = asyncio.get_running_loop().create_task(self._watch_weights())

    # --- weights ---------------------------------------------------------------------------
    async def _load_model(self, model_id: str) -> Any:
        entry = self.weights.get(model_id)
        if entry is None:
            raise KeyError(model_id)
        shared, _ = await load_cached(entry["fingerprint"], entry["path"], f"{self.app}/{self.spec.name}/{model_id}")
        self.phases.mark("weights")
        state_dict = self.engine.from_shared(shared)
        loop = asyncio.get_running_loop()
        module, report = await loop.run_in_executor(
            self._build_executor, self.engine.build_module, self.definition.factory, state_dict, self.device
        )
        self.phases.mark("engine_init")
        logger.info(
            "raygpu: %s/%s loaded model %s v%d (meta device: %s)",
            self.app,
            self.spec.name,
            model_id,
            entry["version"],
            report.meta_device,
        )
        return self.engine.LoadedModel(module, entry["version"])

    async def _watch_weights(self) -> None:
        """Follow the store's weights: a pushed version replaces a loaded model between batches."""
        while True:
            known = {m: w["version"] for m, w in self.weights.items()}
            try:
                latest = await self.store.current_weights.remote(
                    self.app, self.spec.name, known, constants.WEIGHTS_POLL_TIMEOUT_S
                )
            except Exception as exc:
                logger.warning("raygpu: weights watch of %s/%s failed (%s); retrying", self.app, self.spec.name, exc)
                await asyncio.sleep(1.0)
                continue
            changed = [m for m, w in latest.items() if known.get(m) != w["version"]]
            self.weights = latest
            for model_id in changed:
                if model_id not in self.slots.loaded():
                    continue  # loads the new weights when next asked for
                try:
                    self.slots.replace(model_id, await self._load_model(model_id))
                except Exception:
                    logger.exception(
                        "raygpu: could not load weights v%s of %s; still serving the previous ones",
                        latest[model_id]["version"],
                        model_id,
                    )

    # --- calls -----------------------------------------------------------------------------
    def _run_batch(self, model_id: str, items: list[tuple[Any, Any]]) -> list[tuple[Any, int]]:
        current = self.slots.peek(model_id) or items[0][0]  # the newest weights once they are in
        outputs = self.engine.run_inference(
            current.module,
            [item for _, item in items],
            self.device,
            self.definition.preprocess,
            self.definition.postprocess,
        )
        return [(output, current.weights_version) for output in outputs]

    async def __call__(
        self, method: str | None, body: Any, bytes_in: int = 0, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, int, dict[str, str]]:
        with self.metered_call(bytes_in, context_of(headers)) as outcome:
            try:
                status, payload, extra = await self._infer(decoded(body), (headers or {}).get(constants.MODEL_HEADER))
            except Exception as exc:
                logger.warning("raygpu: %s failed: %s", self.spec.name, "".join(traceback.format_exception(exc)))
                status, payload = 500, error_payload(type(exc).__name__, str(exc))
                extra = {ERROR_SOURCE_HEADER: "user"}
            try:
                encoded = encode_json(payload)
            except (TypeError, ValueError) as exc:
                status, extra = 500, {}
                encoded = encode_json(
                    error_payload(
                        "SerializationError",
                        f"{self.spec.name}'s postprocess returned a value that cannot be sent as JSON: {exc}",
                    )
                )
            outcome.status, outcome.bytes_out = status, len(encoded)
            return status, encoded, self.version, extra

    async def _infer(self, body: Any, model_id: str | None) -> tuple[int, Any, dict[str, str]]:
        if self.startup_error is not None:
            return 500, self.startup_error_payload(), {}
        model_id = model_id or self.model_spec.default_model
        if model_id not in self.weights:
            return (
                404,
                error_payload(
                    "UnknownModel",
                    f"{self.spec.name} has no model {model_id!r}; models: "
                    f"{', '.join(self.weights)} (pick one with the {constants.MODEL_HEADER} header)",
                ),
                {},
            )
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
            return (
                422,
                error_payload(
                    "ValidationError",
                    'send {"inputs": [item, ...]}: a non-empty list of inputs, '
                    "each run through the model as one row of a batch",
                ),
                {},
            )
        loaded = await self.slots.get(model_id)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(self.batcher.submit(model_id, (loaded, item)) for item in body["inputs"])),
                timeout=self.spec.timeout,
            )
        except TimeoutError:
            return 504, error_payload("Timeout", f"{self.spec.name} did not answer within {self.spec.timeout:g} s"), {}
        except self.engine.InferenceInputError as exc:
            return 422, error_payload("InvalidInput", f"the model could not run these inputs: {exc}"), {}
        except self.engine.InferenceOutputError as exc:
            logger.warning("raygpu: %s output failed: %s", self.spec.name, "".join(traceback.format_exception(exc)))
            return 500, error_payload("OutputError", f"{self.spec.name} ran but its output failed: {exc}"), {}
        version = results[-1][1]
        payload = {"outputs": [output for output, _ in results], "model": model_id, "weights_version": version}
        return 200, payload, {constants.WEIGHTS_VERSION_HEADER: str(version), constants.MODEL_HEADER: model_id}

    async def model_stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "device": getattr(self, "device", None),
            "loaded": self.slots.loaded() if hasattr(self, "slots") else [],
            "loads": dict(self.slots.loads) if hasattr(self, "slots") else {},
            "evictions": dict(self.slots.evictions) if hasattr(self, "slots") else {},
            "batch_sizes": dict(self.batcher.batch_sizes) if hasattr(self, "batcher") else {},
            "batch_retries": self.batcher.batch_retries if hasattr(self, "batcher") else 0,
            "weights": {m: w["version"] for m, w in getattr(self, "weights", {}).items()},
            "start_phases": self.phases.durations(),
        }

    def _release(self) -> None:
        if getattr(self, "_watch", None) is not None:
            self._watch.cancel()
        if hasattr(self, "batcher"):
            self.batcher.close()
