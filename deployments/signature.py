"""Arguments of a user function as a pydantic model: validation in the replica, schemas for the docs.

Only keyword arguments travel over HTTP: the request body is a JSON object of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model


class ArgumentError(Exception):
    """The request's arguments do not match the function's signature (HTTP 422)."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        fields = ", ".join(sorted({e["field"] for e in errors}))
        super().__init__(f"invalid arguments: {fields}")


def arguments_model(fn: Callable[..., Any], *, skip_first: bool = False) -> type[BaseModel]:
    """A pydantic model with one field per parameter of `fn` (un-annotated parameters take Any)."""
    signature = inspect.signature(fn)
    fields: dict[str, Any] = {}
    params = list(signature.parameters.values())
    if skip_first and params:
        params = params[1:]
    accepts_extra = False
    for param in params:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL,):
            continue
        if param.kind == inspect.Parameter.VAR_KEYWORD:
            accepts_extra = True
            continue
        annotation = Any if param.annotation is inspect.Parameter.empty else param.annotation
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    name = "".join(part.capitalize() for part in fn.__name__.split("_")) + "Arguments"
    config = ConfigDict(extra="allow" if accepts_extra else "forbid", arbitrary_types_allowed=True)
    return create_model(name, __config__=config, **fields)


def positional_parameters(fn: Callable[..., Any], *, skip_first: bool = False) -> list[str]:
    """The names positional arguments of a call bind to, in order (`self` skipped for methods)."""
    params = list(inspect.signature(fn).parameters.values())
    if skip_first and params:
        params = params[1:]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in positional]


def is_generator(fn: Callable[..., Any]) -> bool:
    """Whether `fn`'s body yields (sync or async): its calls stream what it yields."""
    fn = inspect.unwrap(fn)
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def bind_positional(
    function: str, parameters: list[str], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Keyword arguments of a call made with positional ones, bound by the parameter names; a
    TypeError like Python's own for too many or doubly given arguments."""
    if len(args) > len(parameters):
        raise TypeError(
            f"{function}() takes {len(parameters)} positional argument(s) but {len(args)} were given"
            + ("" if parameters else "; pass keyword arguments")
        )
    bound = dict(kwargs)
    for name, value in zip(parameters, args):
        if name in bound:
            raise TypeError(f"{function}() got multiple values for argument {name!r}")
        bound[name] = value
    return bound


def return_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """JSON schema of the return annotation ({} when there is none or it has no schema)."""
    annotation = inspect.signature(fn).return_annotation
    if annotation is inspect.Signature.empty:
        return {}
    try:
        return TypeAdapter(annotation).json_schema()
    except Exception:
        return {}


def validate_arguments(model: type[BaseModel], body: Any) -> dict[str, Any]:
    """Validate a decoded JSON body against `model`; raise ArgumentError listing every bad field."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ArgumentError(
            [
                {
                    "field": "(body)",
                    "message": "the request body must be a JSON object of keyword arguments",
                    "type": "dict_type",
                }
            ]
        )
    try:
        validated = model.model_validate(body)
    except ValidationError as exc:
        raise ArgumentError(
            [
                {
                    "field": ".".join(str(part) for part in err["loc"]) or "(body)",
                    "message": err["msg"],
                    "type": err["type"],
                }
                for err in exc.errors(include_url=False)
            ]
        ) from None
    arguments = {name: getattr(validated, name) for name in type(validated).model_fields}
    if validated.model_extra:
        arguments.update(validated.model_extra)
    return arguments
