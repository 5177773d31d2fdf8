"""The engine-level model code (torch only, no Ray): weights, meta-device builds, batching, LRU."""

import asyncio

import pytest
import torch

from deployments.engines.torch_engine import (
    DynamicBatcher,
    InferenceInputError,
    InferenceOutputError,
    LoadedModel,
    ModelSlots,
    build_module,
    from_shared,
    read_weights,
    run_inference,
    to_shared,
)


def net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


class WithBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.register_buffer("offset", torch.arange(2.0), persistent=False)

    def forward(self, x):
        return self.linear(x) + self.offset


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_round_trip_through_shared_arrays(tmp_path, suffix):
    reference = net()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(path))
    else:
        torch.save(reference.state_dict(), path)
    shared = to_shared(read_weights(path))
    module, report = build_module(net, from_shared(shared))
    assert report.meta_device and not report.unused_keys
    x = torch.randn(5, 4)
    assert torch.equal(module(x), reference(x))
    # the module's parameters are the shared arrays themselves, not copies
    assert module[0].bias.data_ptr() == shared["0.bias"][0].__array_interface__["data"][0]


def test_bfloat16_survives_numpy():
    state = {"w": torch.randn(3, 3).to(torch.bfloat16)}
    back = from_shared(to_shared(state))
    assert back["w"].dtype == torch.bfloat16 and torch.equal(back["w"], state["w"])


def test_missing_tensors_are_an_error_and_computed_buffers_fall_back_to_a_real_build():
    with pytest.raises(ValueError, match="lacks 2 tensors"):
        build_module(net, {k: v for k, v in net().state_dict().items() if not k.startswith("2.")})
    reference = WithBuffer()
    module, report = build_module(WithBuffer, {**reference.state_dict(), "extra": torch.zeros(1)})
    assert not report.meta_device and report.unused_keys == ["extra"]
    x = torch.randn(2, 2)
    assert torch.equal(module(x), reference(x))


def test_batches_form_under_concurrency_and_keep_models_apart():
    seen = []

    def run(key, items):
        seen.append((key, list(items)))
        return [f"{key}:{i}" for i in items]

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=4, batch_wait_timeout_s=0.05)
        out = await asyncio.gather(*(batcher.submit("a" if i % 2 else "b", i) for i in range(10)))
        batcher.close()
        return out

    out = asyncio.run(main())
    assert out == [f"{'a' if i % 2 else 'b'}:{i}" for i in range(10)]
    assert all((k == "a") == (i % 2 == 1) for k, items in seen for i in items)  # a batch holds one model's items
    assert max(len(items) for _, items in seen) == 4 and len(seen) < 10


def test_a_failing_batch_fails_its_callers_only():
    def run(key, items):
        if "bad" in items:
            raise ValueError("bad input")
        return items

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=2, batch_wait_timeout_s=0.01)
        first = await asyncio.gather(batcher.submit("k", "bad"), return_exceptions=True)
        second = await batcher.submit("k", "good")
        batcher.close()
        return first, second

    first, second = asyncio.run(main())
    assert isinstance(first[0], ValueError) and second == "good"


def test_one_bad_item_fails_only_its_own_caller_in_a_shared_batch():
    module = torch.nn.Linear(2, 1)
    runs = []

    def run(key, items):
        runs.append(len(items))
        return run_inference(module, items, "cpu")

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=8, batch_wait_timeout_s=0.05)
        items = [[1.0, 2.0], [1.0, 2.0, 3.0], [3.0, 4.0], "text", [5.0, 6.0]]  # ragged and wrong type
        out = await asyncio.gather(*(batcher.submit("k", i) for i in items), return_exceptions=True)
        batcher.close()
        return out, batcher.batch_retries

    out, retries = asyncio.run(main())
    assert [type(o).__name__ for o in out] == ["list", "InferenceInputError", "list", "InferenceInputError", "list"]
    assert runs[0] == 5 and runs[1:] == [1] * 5 and retries == 1


def test_inference_errors_say_whether_the_input_or_the_output_failed():
    module = torch.nn.Linear(2, 1)
    with pytest.raises(InferenceInputError, match="mat1 and mat2|shape"):
        run_inference(module, [[1.0, 2.0, 3.0]], "cpu")
    with pytest.raises(InferenceOutputError, match="postprocess failed: KeyError"):
        run_inference(module, [[1.0, 2.0]], "cpu", postprocess=lambda output, items: {}["missing"])

    def run(key, items):
        return items[:1]  # one result for a batch of two

    async def main():
        batcher = DynamicBatcher(run, max_batch_size=2, batch_wait_timeout_s=0.05)
        out = await asyncio.gather(batcher.submit("k", 1), batcher.submit("k", 2), return_exceptions=True)
        batcher.close()
        return out

    assert asyncio.run(main()) == [1, 2]  # the item-by-item rerun gives each caller its own result


def test_model_slots_evict_least_recently_used_and_load_once():
    loads = []

    async def load(model_id):
        loads.append(model_id)
        await asyncio.sleep(0.01)
        return LoadedModel(module=model_id, weights_version=1)

    async def main():
        slots = ModelSlots(2, load)
        await asyncio.gather(*(slots.get("a") for _ in range(5)))  # one load for five callers
        await slots.get("b")
        await slots.get("a")
        await slots.get("c")  # evicts b (least recently used)
        await slots.get("b")  # reloads b, evicts a
        return slots

    slots = asyncio.run(main())
    assert loads == ["a", "b", "c", "b"]
    assert slots.loaded() == ["c", "b"] and dict(slots.evictions) == {"b": 1, "a": 1}


def test_run_inference_with_default_and_custom_processing():
    module = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(2.0)
    assert run_inference(module, [[1, 1], [2, 3]], "cpu") == [[4.0], [10.0]]
    out = run_inference(
        module,
        [1, 2],
        "cpu",
        preprocess=lambda items, device: torch.tensor([[i, i] for i in items], dtype=torch.float32),
        postprocess=lambda output, items: [round(v.item()) for v in output],
    )
    assert out == [4, 8]


def test_weights_signatures_tell_what_does_not_fit(tmp_path):
    from safetensors.torch import save_file

    from deployments.engines.torch_engine import signature_mismatches, weights_signature

    save_file({"weight": torch.ones(1, 4), "bias": torch.zeros(1)}, str(tmp_path / "a.safetensors"))
    torch.save({"weight": torch.ones(1, 4, dtype=torch.float16)}, tmp_path / "b.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    a = weights_signature(tmp_path / "a.safetensors")
    assert a == {"weight": ((1, 4), "torch.float32"), "bias": ((1,), "torch.float32")}
    b = weights_signature(tmp_path / "b.pt")
    assert signature_mismatches(a, a) == []
    assert signature_mismatches(a, b) == [
        "missing tensor 'bias'",
        "'weight' is torch.float16, the model's is torch.float32",
    ]
    with pytest.raises(ValueError, match="not a readable weights file"):
        weights_signature(tmp_path / "junk.safetensors")


def test_the_node_cache_keeps_a_models_current_and_previous_weights(tmp_path, monkeypatch):
    import ray
    from safetensors.torch import save_file

    from deployments.node.weight_cache import NodeWeightCache

    monkeypatch.setattr(ray, "put", lambda value: value)  # the object store, as far as this test needs
    for i in range(4):
        save_file({"weight": torch.full((1, 4), float(i))}, str(tmp_path / f"v{i}.safetensors"))

    async def main():
        cache = NodeWeightCache()
        for i in range(4):
            await cache.get(f"k{i}", str(tmp_path / f"v{i}.safetensors"), "shop/ranker/a")
        await cache.get("other", str(tmp_path / "v0.safetensors"), "shop/ranker/b")
        return cache

    cache = asyncio.run(main())
    assert sorted(cache.entries) == ["k2", "k3", "other"] and cache.evicted == 2
