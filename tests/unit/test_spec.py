"""Decorator-time validation and in-process calls (no cluster)."""

import pytest

import raygpu
from deployments.signature import ArgumentError, arguments_model, validate_arguments
from deployments.spec import FunctionSpec, parse_gpu


@pytest.mark.parametrize(
    "value,count,types",
    [
        (None, None, None),
        (1, 1, None),
        (2, 2, None),
        ("H100", 1, ["H100"]),
        ("a10g:2", 2, ["A10G"]),
        (["H100", "A100"], 1, ["H100", "A100"]),
        (["H100:2", "A100:2"], 2, ["H100", "A100"]),
    ],
)
def test_gpu_forms(value, count, types):
    parsed = parse_gpu(value)
    if count is None:
        assert parsed is None
    else:
        assert parsed.count == count and parsed.types == types


@pytest.mark.parametrize(
    "settings,field",
    [
        ({"gpu": "K9000"}, "gpu"),
        ({"gpu": 0}, "gpu"),
        ({"gpu": "H100:x"}, "gpu"),
        ({"gpu": []}, "gpu"),
        ({"gpu": ["H100", "A100:2"]}, "gpu"),
        ({"cpu": 0}, "cpu"),
        ({"max_inputs": 0}, "max_inputs"),
        ({"timeout": -1}, "timeout"),
        ({"scaledown_window": 0}, "scaledown_window"),
        ({"retries": 99}, "retries"),
        ({"max_queue": -1}, "max_queue"),
        ({"min_containers": 5, "max_containers": 2}, "min_containers"),
        ({"memory": 0}, "memory"),
        ({"gpus": 1}, "gpus"),
    ],
)
def test_invalid_settings_fail_at_decoration_naming_the_field(settings, field):
    app = raygpu.App("specs")
    with pytest.raises(raygpu.InvalidSpecError) as info:

        @app.function(**settings)
        def f() -> None: ...

    assert field in str(info.value)
    assert "specs/f" in str(info.value)


@pytest.mark.parametrize("name", ["docs", "calls", "spawn", "v1", "_private", "has space", "9lives"])
def test_reserved_and_invalid_function_names(name):
    app = raygpu.App("names")
    with pytest.raises(raygpu.InvalidSpecError) as info:
        app.function(name=name)(lambda: None)
    assert "name" in str(info.value)


@pytest.mark.parametrize("name", ["healthz", "_x", "a/b", ""])
def test_invalid_app_names(name):
    with pytest.raises(raygpu.InvalidSpecError):
        raygpu.App(name)


def test_duplicate_names_and_class_without_methods():
    app = raygpu.App("dups")

    @app.function()
    def f() -> int:
        return 1

    with pytest.raises(raygpu.InvalidSpecError, match="already"):
        app.function(name="f")(lambda: 2)
    with pytest.raises(raygpu.InvalidSpecError, match="method"):

        @app.cls()
        class Empty:
            pass


def test_plain_calls_run_in_process():
    app = raygpu.App("local")

    @app.function(gpu="H100:2", image=raygpu.Image(pip=["requests"], env={"A": "1"}))
    def double(x: int) -> int:
        return 2 * x

    assert double(21) == 42
    assert double.spec.gpu_request.count == 2
    assert double.spec.image.to_runtime_env() == {"pip": ["requests"], "env_vars": {"A": "1"}}

    entered = []

    @app.cls()
    class Model:
        @raygpu.enter()
        def load(self):
            entered.append(True)
            self.offset = 10

        @raygpu.method()
        def predict(self, x: int) -> int:
            return x + self.offset

    model = Model()
    assert model.predict(1) == 11 and model.predict(2) == 12
    assert entered == [True]
    assert Model._raygpu_spec.methods == ["predict"]


def test_argument_validation_lists_every_bad_field():
    def fn(a: int, b: str, c: float = 1.0) -> None: ...

    model = arguments_model(fn)
    assert validate_arguments(model, {"a": "3", "b": "x"}) == {"a": 3, "b": "x", "c": 1.0}
    with pytest.raises(ArgumentError) as info:
        validate_arguments(model, {"a": "nope", "extra": 1})
    fields = {e["field"] for e in info.value.errors}
    assert fields == {"a", "b", "extra"}
    with pytest.raises(ArgumentError):
        validate_arguments(model, [1, 2])


def test_spec_round_trips_as_json():
    spec = FunctionSpec(name="f", gpu=["H100", "A100"], max_queue=3)
    again = FunctionSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.gpu_request.types == ["H100", "A100"]


def test_model_specs_validate_at_declaration(tmp_path):
    import raygpu
    from raygpu.sdk.errors import InvalidSpecError

    app = raygpu.App("models-spec")
    model = app.torch_model(
        "net",
        factory=lambda: None,
        weights={"a": tmp_path / "a.pt", "b-2": tmp_path / "b.pt"},
        max_models=1,
        gpu="H100",
    )
    assert model.spec.kind == "torch" and model.spec.torch_model.default_model == "a"
    with pytest.raises(InvalidSpecError, match="model id 'bad id'"):
        app.torch_model("net2", factory=lambda: None, weights={"bad id": "x.pt"})
    with pytest.raises(InvalidSpecError, match="max_batch_size"):
        app.torch_model("net3", factory=lambda: None, weights="x.pt", max_batch_size=0)
    with pytest.raises(InvalidSpecError, match="factory must be a callable"):
        app.torch_model("net4", factory=None, weights="x.pt")
    chat = raygpu.vllm(app, "chat", model="/models/llama", engine_args={"max_model_len": 512})
    assert (
        chat.spec.kind == "vllm" and chat.spec.max_inputs == 64 and chat.spec.vllm_model.model_name == "/models/llama"
    )
    with pytest.raises(InvalidSpecError, match="task"):
        raygpu.vllm(app, "emb", model="/m", task="classify")
    with pytest.raises(InvalidSpecError, match="already in this app"):
        raygpu.vllm(app, "net", model="/m")


def test_vllm_sleep_mode_is_refused_without_cuda():
    import torch

    from deployments.engines.vllm_engine import sleep_mode_supported

    supported, reason = sleep_mode_supported()
    assert supported == torch.cuda.is_available()
    if not supported:
        assert "needs a CUDA GPU" in reason


@pytest.mark.parametrize("name", ["spawn", "calls"])
def test_a_class_or_method_named_like_a_gateway_route_is_refused(name):
    app = raygpu.App("routes")
    with pytest.raises(raygpu.InvalidSpecError, match=f"{name!r} is reserved"):
        app.cls(name=name)(type("Job", (), {"run": raygpu.method()(lambda self: 1)}))
    with pytest.raises(raygpu.InvalidSpecError, match=f"{name!r} is reserved"):
        app.cls()(type("Job", (), {name: raygpu.method()(lambda self: 1)}))
