"""The SDK: `App`, `@app.function`, `@app.cls` and the lifecycle markers of a class.

Decorators validate their settings at once (an `InvalidSpecError` names the field) and return
objects that still run in-process when called plainly.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pydantic import ValidationError

from deployments.kinds import checked
from deployments.lifecycle import (
    ENTER_MARK,
    EXIT_MARK,
    METHOD_MARK,
    SNAP_MARK,
    method_names,
    run_enter_hooks,
    snap_hook_names,
)
from deployments.signature import is_generator, positional_parameters
from deployments.spec import FunctionSpec, Image, TorchModelCode, TorchModelSpec, VllmModelSpec, validate_name
from raygpu.sdk.client import lookup
from raygpu.sdk.errors import InvalidSpecError

T = TypeVar("T")


def _spec_error(target: str, exc: ValidationError) -> InvalidSpecError:
    lines = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"]) or "spec"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{field}: {message}")
    return InvalidSpecError(f"{target}: invalid settings: " + "; ".join(lines))


def enter(*, snap: bool = False) -> Callable[[T], T]:
    """Mark a method of an `@app.cls` class to run once when a replica starts (load models here).

    `snap=True` marks the CPU-side part of start-up (imports, weights into host memory, tokenizers):
    a warm worker of the app runs it before any call arrives, and the replica that adopts the worker
    runs only the other hooks (moving weights to the GPU). A `snap=True` hook must not initialise
    CUDA: no GPU is assigned yet when it runs."""

    def mark(fn: T) -> T:
        setattr(fn, ENTER_MARK, True)
        if snap:
            setattr(fn, SNAP_MARK, True)
        return fn

    return mark


def exit() -> Callable[[T], T]:  # noqa: A001 - mirrors the decorator name users know
    """Mark a method of an `@app.cls` class to run when a replica stops."""

    def mark(fn: T) -> T:
        setattr(fn, EXIT_MARK, True)
        return fn

    return mark


def method() -> Callable[[T], T]:
    """Mark a method of an `@app.cls` class as callable at `POST /{app}/{Class}/{method}`."""

    def mark(fn: T) -> T:
        setattr(fn, METHOD_MARK, True)
        return fn

    return mark


def _with_lazy_enter(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A plain local call of a method runs the class's enter hooks first, as a replica would."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            run_enter_hooks(self)
            return await fn(self, *args, **kwargs)

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        run_enter_hooks(self)
        return fn(self, *args, **kwargs)

    return wrapper


def _check_runs_without_arguments(target: str, fn: Callable[..., Any]) -> None:
    """A scheduled function is called with no arguments: every parameter needs a default."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return
    required = [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise InvalidSpecError(
            f"{target}: a scheduled function is called with no arguments, but {', '.join(required)} "
            "has no default; give it one or schedule a function that calls this one"
        )


class Function:
    """A deployable function. Calling it runs it in-process; `.remote()` calls the deployed one."""

    def __init__(self, app: "App", fn: Callable[..., Any], spec: FunctionSpec):
        self.app = app
        self.fn = fn
        self.spec = spec
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Call the deployed function (see RemoteFunction.remote)."""
        return lookup(self.app.name, self.spec.name).remote(*args, **kwargs)

    def spawn(self, *args: Any, **kwargs: Any) -> Any:
        """Start a background call of the deployed function; a FunctionCall (see RemoteFunction.spawn)."""
        return lookup(self.app.name, self.spec.name).spawn(*args, **kwargs)

    def map(self, *iterables: Any, **options: Any) -> Iterator[Any]:
        """Call the deployed function once per input, many at once (see RemoteFunction.map)."""
        return lookup(self.app.name, self.spec.name).map(*iterables, **options)

    def starmap(self, input_iterator: Any, **options: Any) -> Iterator[Any]:
        """`map` with each input a tuple of positional arguments (see RemoteFunction.starmap)."""
        return lookup(self.app.name, self.spec.name).starmap(input_iterator, **options)

    def remote_gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Iterate what the deployed generator function yields (see RemoteFunction.remote_gen)."""
        return lookup(self.app.name, self.spec.name).remote_gen(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<raygpu.Function {self.app.name}/{self.spec.name}>"


class Model:
    """A deployed model (torch or vLLM) of an app; `.remote(inputs)` calls the deployed one."""

    def __init__(self, app: "App", spec: FunctionSpec, code: TorchModelCode | None = None):
        self.app = app
        self.spec = spec
        self.code = code

    def __repr__(self) -> str:
        return f"<raygpu.Model {self.app.name}/{self.spec.name} ({self.spec.kind})>"


class App:
    """A named group of functions and classes deployed, versioned and deleted together."""

    def __init__(self, name: str):
        try:
            self.name = validate_name(name, what="app")
        except ValueError as exc:
            raise InvalidSpecError(f"App({name!r}): {exc}") from None
        self.functions: dict[str, Function] = {}
        self.classes: dict[str, type] = {}
        self.models: dict[str, Model] = {}

    @property
    def specs(self) -> dict[str, FunctionSpec]:
        return {name: spec for name, (spec, _) in self.units.items()}

    @property
    def units(self) -> dict[str, tuple[FunctionSpec, Any]]:
        """Each unit's spec and the code its replicas run: the function, the class, the torch
        model's factory and processing (nothing for vLLM)."""
        out: dict[str, tuple[FunctionSpec, Any]] = {name: (f.spec, f.fn) for name, f in self.functions.items()}
        out.update({name: (cls._raygpu_spec, cls) for name, cls in self.classes.items()})  # type: ignore[attr-defined]
        out.update({name: (m.spec, m.code) for name, m in self.models.items()})
        return out

    def _new_spec(self, name: str, kind: str, **settings: Any) -> FunctionSpec:
        """A validated spec of a new unit of this app (InvalidSpecError naming the field otherwise)."""
        try:
            spec = checked(FunctionSpec(name=name, kind=kind, **settings))
        except ValidationError as exc:
            raise _spec_error(f"{self.name}/{name}", exc) from None
        except (TypeError, ValueError) as exc:
            raise InvalidSpecError(f"{self.name}/{name}: {exc}") from None
        self._register(spec.name)
        return spec

    def _register(self, name: str) -> None:
        if name in self.functions or name in self.classes or name in self.models:
            raise InvalidSpecError(f"{self.name}/{name}: a function or class of that name is already in this app")

    def function(self, _fn: Callable[..., Any] | None = None, **settings: Any) -> Any:
        """Declare a deployable function: `@app.function(gpu="H100", scaledown_window=30)`."""

        def decorate(fn: Callable[..., Any]) -> Function:
            if inspect.isclass(fn) or not callable(fn):
                raise InvalidSpecError(f"@{self.name}.function must decorate a function; use @app.cls for classes")
            name = settings.pop("name", fn.__name__)
            if settings.get("schedule") is not None:
                _check_runs_without_arguments(f"{self.name}/{name}", fn)
            spec = self._new_spec(
                name,
                "function",
                parameters={name: positional_parameters(fn)},
                generators=[name] if is_generator(fn) else [],
                **settings,
            )
            function = Function(self, fn, spec)
            self.functions[spec.name] = function
            return function

        return decorate(_fn) if _fn is not None else decorate

    def cls(self, _cls: type | None = None, **settings: Any) -> Any:
        """Declare a deployable class whose `@raygpu.method()` methods become routes."""

        def decorate(cls: type) -> type:
            if not inspect.isclass(cls):
                raise InvalidSpecError(f"@{self.name}.cls must decorate a class; use @app.function for functions")
            methods = method_names(cls)
            callables = {name: getattr(cls, name) for name in methods}
            spec = self._new_spec(
                settings.pop("name", cls.__name__),
                "class",
                methods=methods,
                snap_hooks=snap_hook_names(cls),
                parameters={name: positional_parameters(fn, skip_first=True) for name, fn in callables.items()},
                generators=[name for name, fn in callables.items() if is_generator(fn)],
                **settings,
            )
            for method_name in methods:
                original = cls.__dict__.get(method_name)
                if original is not None:
                    wrapped = _with_lazy_enter(original)
                    setattr(wrapped, METHOD_MARK, True)
                    setattr(cls, method_name, wrapped)
            cls._raygpu_spec = spec  # type: ignore[attr-defined]
            cls._raygpu_app = self.name  # type: ignore[attr-defined]
            self.classes[spec.name] = cls
            return cls

        return decorate(_cls) if _cls is not None else decorate

    def torch_model(
        self,
        name: str,
        *,
        factory: Callable[[], Any],
        weights: str | dict[str, str],
        max_models: int | None = None,
        max_batch_size: int | None = None,
        batch_wait_timeout_s: float | None = None,
        preprocess: Callable[..., Any] | None = None,
        postprocess: Callable[..., list[Any]] | None = None,
        **settings: Any,
    ) -> Model:
        """Deploy an nn.Module at `POST /{app}/{name}` with `{"inputs": [...]}`.

        `factory()` builds the module (on the meta device: no random init); `weights` is a
        safetensors or torch.save file, or {model_id: file} for several models per replica, picked
        per request with the `x-raygpu-model` header (the first is the default; `max_models` stay
        loaded, least recently used evicted). Items of concurrent requests are batched up to
        `max_batch_size`, waiting at most `batch_wait_timeout_s` for a batch to fill.
        `raygpu weights push` replaces weights on running replicas without a redeploy."""
        if not callable(factory):
            raise InvalidSpecError(f"{self.name}/{name}: factory must be a callable that returns an nn.Module")
        files = {"default": weights} if isinstance(weights, (str, bytes)) or hasattr(weights, "__fspath__") else weights
        if not isinstance(files, dict):
            raise InvalidSpecError(f"{self.name}/{name}: weights must be a file path or a {{model_id: path}} dict")
        try:
            model = TorchModelSpec(
                weights={k: str(v) for k, v in files.items()},
                **{
                    k: v
                    for k, v in {
                        "max_models": max_models,
                        "max_batch_size": max_batch_size,
                        "batch_wait_timeout_s": batch_wait_timeout_s,
                    }.items()
                    if v is not None
                },
            )
        except ValidationError as exc:
            raise _spec_error(f"{self.name}/{name}", exc) from None
        spec = self._new_spec(name, "torch", torch_model=model, **settings)
        self.models[name] = Model(self, spec, TorchModelCode(factory, preprocess, postprocess))
        return self.models[name]

    def vllm(
        self,
        name: str,
        *,
        model: str,
        served_model_name: str | None = None,
        task: str = "generate",
        engine_args: dict[str, Any] | None = None,
        sleep_mode: bool = False,
        **settings: Any,
    ) -> Model:
        """Deploy a vLLM engine with an OpenAI-compatible API at `/{app}/{name}/v1/...`.

        `engine_args` pass through to vLLM's engine; `task="embed"` serves `/v1/embeddings`."""
        try:
            vllm_model = VllmModelSpec(
                model=str(model),
                served_model_name=served_model_name,
                task=task,
                engine_args=dict(engine_args or {}),
                sleep_mode=sleep_mode,
            )
        except ValidationError as exc:
            raise _spec_error(f"{self.name}/{name}", exc) from None
        settings.setdefault("max_inputs", 64)
        spec = self._new_spec(name, "vllm", vllm_model=vllm_model, **settings)
        self.models[name] = Model(self, spec)
        return self.models[name]

    def __repr__(self) -> str:
        return f"<raygpu.App {self.name}: {', '.join(self.specs) or 'empty'}>"


def vllm(app: App, name: str, **kwargs: Any) -> Model:
    """`raygpu.vllm(app, "chat", model=PATH, gpu="H100", engine_args={...})`: see `App.vllm`."""
    return app.vllm(name, **kwargs)


def torch_model(app: App, name: str, **kwargs: Any) -> Model:
    """`raygpu.torch_model(app, "net", factory=..., weights=PATH)`: see `App.torch_model`."""
    return app.torch_model(name, **kwargs)


__all__ = ["App", "Function", "Image", "Model", "enter", "exit", "method", "torch_model", "vllm"]
