"""Engine-level PyTorch model serving: weights, meta-device construction, dynamic batching, a
multi-model LRU and versioned weights. Imports only torch (and safetensors when present), so it
runs, and is checked on a GPU, where Ray is absent.
"""

from __future__ import annotations

import asyncio
import collections
import time
import warnings
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# numpy has no bfloat16: such tensors travel as int16 bit patterns with their real dtype beside them
_VIEW_AS = {torch.bfloat16: torch.int16}
_DTYPES = {
    str(d): d
    for d in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}

SharedWeights = dict[str, tuple[np.ndarray, str]]


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a `torch.save` file, memory-mapped where possible."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:  # not a zip-format checkpoint: no mmap
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.state_dict()
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors)")
    return loaded


def weights_signature(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, dtype)} of a weights file, from its header where the format allows
    (safetensors), without keeping the tensors. ValueError when the file is not a weights file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {name: (tuple(f.get_slice(name).get_shape()), _safetensors_dtype(f, name)) for name in f.keys()}
        return {name: (tuple(t.shape), str(t.dtype)) for name, t in read_weights(path).items()}
    except Exception as exc:
        raise ValueError(f"{path} is not a readable weights file: {type(exc).__name__}: {exc}") from None


def _safetensors_dtype(handle: Any, name: str) -> str:
    names = {
        "F32": "torch.float32",
        "F16": "torch.float16",
        "BF16": "torch.bfloat16",
        "F64": "torch.float64",
        "I64": "torch.int64",
        "I32": "torch.int32",
        "I16": "torch.int16",
        "I8": "torch.int8",
        "U8": "torch.uint8",
        "BOOL": "torch.bool",
        "F8_E4M3": "torch.float8_e4m3fn",
        "F8_E5M2": "torch.float8_e5m2",
    }
    raw = handle.get_slice(name).get_dtype()
    return names.get(raw, raw)


def signature_mismatches(
    current: dict[str, tuple[tuple[int, ...], str]], new: dict[str, tuple[tuple[int, ...], str]], limit: int = 5
) -> list[str]:
    """How new weights differ from the ones a model runs (missing or extra tensors, other shapes or
    dtypes), at most `limit` of them; empty when they fit the same module."""
    problems = [f"missing tensor {name!r}" for name in sorted(set(current) - set(new))]
    problems += [f"unexpected tensor {name!r}" for name in sorted(set(new) - set(current))]
    for name in sorted(set(current) & set(new)):
        (shape, dtype), (new_shape, new_dtype) = current[name], new[name]
        if shape != new_shape:
            problems.append(f"{name!r} has shape {list(new_shape)}, the model's is {list(shape)}")
        elif dtype != new_dtype:
            problems.append(f"{name!r} is {new_dtype}, the model's is {dtype}")
    return problems[:limit]


def to_shared(state_dict: dict[str, torch.Tensor]) -> SharedWeights:
    """numpy views of a state dict, ready for a shared-memory object store."""
    out: SharedWeights = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        view = _VIEW_AS.get(tensor.dtype)
        out[name] = ((tensor.view(view) if view is not None else tensor).numpy(), str(tensor.dtype))
    return out


def from_shared(shared: SharedWeights) -> dict[str, torch.Tensor]:
    """Tensors over the (read-only, shared) arrays, without copying them."""
    out = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        for name, (array, dtype) in shared.items():
            tensor = torch.from_numpy(array)
            real = _DTYPES.get(dtype)
            out[name] = tensor.view(real) if real is not None and real != tensor.dtype else tensor
    return out


@dataclass
class BuildReport:
    """How a module was built: on the meta device (no random init, weights assigned in place) or
    the ordinary way (when the factory keeps state outside the state dict)."""

    meta_device: bool
    build_s: float
    load_s: float
    to_device_s: float
    unused_keys: list[str] = field(default_factory=list)


def _load_checked(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], assign: bool) -> list[str]:
    """Load; a parameter the file lacks is an error, a tensor the module does not use is reported."""
    result = module.load_state_dict(state_dict, strict=False, assign=assign)
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:8]) + (" ..." if len(result.missing_keys) > 8 else "")
        raise ValueError(f"the weights file lacks {len(result.missing_keys)} tensors the module needs: {shown}")
    return list(result.unexpected_keys)


def build_module(
    factory: Callable[[], torch.nn.Module], state_dict: dict[str, torch.Tensor], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, BuildReport]:
    """Build the module without initialising it (meta device) and take the weights as they are."""
    started = time.perf_counter()
    with torch.device("meta"):
        module = factory()
    built = time.perf_counter()
    unused = _load_checked(module, state_dict, assign=True)
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    meta_device = not leftover
    if leftover:  # non-persistent buffers the factory computes: build it for real
        module = factory()
        built = time.perf_counter()
        unused = _load_checked(module, state_dict, assign=False)
    loaded = time.perf_counter()
    module = module.to(device).eval()
    done = time.perf_counter()
    return module, BuildReport(meta_device, built - started, loaded - built, done - loaded, unused)


@dataclass
class LoadedModel:
    module: torch.nn.Module
    weights_version: int
    loaded_at: float = field(default_factory=time.time)


class ModelSlots:
    """Loaded models by id, at most `capacity`, least recently used evicted first. A model's
    weights can be replaced while calls use it: a call keeps the module it started with."""

    def __init__(self, capacity: int, load: Callable[[str], Awaitable[LoadedModel]]):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._load = load
        self._models: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}
        self.loads: collections.Counter[str] = collections.Counter()
        self.evictions: collections.Counter[str] = collections.Counter()

    def loaded(self) -> list[str]:
        return list(self._models)

    def peek(self, model_id: str) -> LoadedModel | None:
        """The loaded model, without touching its LRU position."""
        return self._models.get(model_id)

    async def get(self, model_id: str) -> LoadedModel:
        model = self._models.get(model_id)
        if model is not None:
            self._models.move_to_end(model_id)
            return model
        pending = self._loading.get(model_id)
        if pending is None:  # one load per model however many callers ask at once
            pending = self._loading[model_id] = asyncio.ensure_future(self._load(model_id))
            try:
                model = await pending
            finally:
                del self._loading[model_id]
            self.loads[model_id] += 1
            self._models[model_id] = model
            while len(self._models) > self.capacity:
                evicted, _ = self._models.popitem(last=False)
                self.evictions[evicted] += 1
            return model
        return await asyncio.shield(pending)

    def replace(self, model_id: str, model: LoadedModel) -> None:
        """New weights for a loaded model (or nothing, when it is not loaded: it loads the new ones later)."""
        if model_id in self._models:
            self._models[model_id] = model


class InferenceInputError(ValueError):
    """An item the model cannot take (preprocess or forward pass failed): the caller's input."""


class InferenceOutputError(RuntimeError):
    """The model ran but its output could not be turned into one result per item (postprocess)."""


def _settle(future: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class DynamicBatcher:
    """Collects single items into batches: a batch runs when it holds `max_batch_size` items or
    its first item has waited `batch_wait_timeout_s`. Batches of different keys (models) never mix;
    one batch runs at a time, in a worker thread."""

    def __init__(
        self,
        run_batch: Callable[[Hashable, list[Any]], list[Any]],
        max_batch_size: int,
        batch_wait_timeout_s: float,
        executor: ThreadPoolExecutor | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if batch_wait_timeout_s < 0:
            raise ValueError("batch_wait_timeout_s must not be negative")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.wait_s = batch_wait_timeout_s
        self.executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="raygpu-batch")
        self._queues: dict[Hashable, asyncio.Queue] = {}
        self._workers: dict[Hashable, asyncio.Task] = {}
        self._run_lock = asyncio.Lock()
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.batch_retries = 0  # failed batches rerun item by item

    async def submit(self, key: Hashable, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self._workers[key] = asyncio.get_running_loop().create_task(self._work(key, queue))
        queue.put_nowait((item, future))
        return await future

    async def _work(self, key: Hashable, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            while len(batch) < self.max_batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            live = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not live:
                continue
            async with self._run_lock:
                self.batch_sizes[len(live)] += 1
                try:
                    results = await self._run(key, [i for i, _ in live])
                except Exception as exc:
                    if len(live) == 1:
                        _settle(live[0][1], exc=exc)
                        continue
                    # One bad item must not fail its batch-mates: run each alone, so every caller
                    # gets its own item's result or error.
                    self.batch_retries += 1
                    for item, fut in live:
                        if fut.cancelled():
                            continue
                        try:
                            (result,) = await self._run(key, [item])
                        except Exception as item_exc:
                            _settle(fut, exc=item_exc)
                        else:
                            _settle(fut, result=result)
                    continue
            for (_, fut), result in zip(live, results):
                _settle(fut, result=result)

    async def _run(self, key: Hashable, items: list[Any]) -> list[Any]:
        results = await asyncio.get_running_loop().run_in_executor(self.executor, self.run_batch, key, items)
        if len(results) != len(items):
            raise InferenceOutputError(f"a batch of {len(items)} item(s) gave {len(results)} result(s)")
        return results

    def close(self) -> None:
        for task in self._workers.values():
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


def default_preprocess(items: list[Any], device: torch.device | str) -> torch.Tensor:
    return torch.as_tensor(items, dtype=torch.float32, device=device)


def default_postprocess(output: Any, items: list[Any]) -> list[Any]:
    if isinstance(output, torch.Tensor):
        return output.detach().cpu().tolist()
    return list(output)


def run_inference(
    module: torch.nn.Module,
    items: list[Any],
    device: torch.device | str,
    preprocess: Callable[..., Any] | None = None,
    postprocess: Callable[..., list[Any]] | None = None,
) -> list[Any]:
    """One batch through a module: preprocess(items, device) → module(...) → postprocess(output, items).
    A failure before the output exists is an InferenceInputError, one after it an InferenceOutputError."""
    try:
        batch = (preprocess or default_preprocess)(items, device)
        with torch.inference_mode():
            output = module(**batch) if isinstance(batch, dict) else module(batch)
    except Exception as exc:
        raise InferenceInputError(f"{type(exc).__name__}: {exc}") from exc
    try:
        results = (postprocess or default_postprocess)(output, items)
        return list(results)
    except Exception as exc:
        raise InferenceOutputError(f"postprocess failed: {type(exc).__name__}: {exc}") from exc
