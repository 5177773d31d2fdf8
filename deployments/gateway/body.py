"""Reading a call's JSON body at the gateway: strict UTF-8, bounded numbers and nesting, a JSON
object at the top. Every failure is a BodyError (400) naming the problem. Pure: no Ray."""

from __future__ import annotations

import json
import math
from typing import Any

# Deeper JSON than this is refused before it reaches a replica (pydantic and pickling recurse).
MAX_JSON_DEPTH = 64
# Longest number literal accepted (Python refuses int conversions past 4300 digits by default).
MAX_NUMBER_DIGITS = 4300


class BodyError(ValueError):
    """A request body the gateway refuses with 400; `error_type` names the problem."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise BodyError(
            "NumberTooLarge", f"a number in the body has {len(text)} digits; the limit is {MAX_NUMBER_DIGITS}"
        )
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise BodyError(
            "NumberTooLarge", f"a number in the body has {len(text)} characters; the limit is {MAX_NUMBER_DIGITS}"
        )
    value = float(text)
    if not math.isfinite(value):
        raise BodyError("NumberTooLarge", f"the number {text[:40]} does not fit a 64-bit float")
    return value


def _refuse_constant(name: str) -> Any:
    raise BodyError("MalformedJSON", f"{name} is not JSON; send numbers as finite decimals")


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and objects deeper than `limit` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_json_body(raw: bytes) -> Any:
    """The JSON value of a body (an empty body is `{}`); BodyError when it is not acceptable JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(
            "InvalidUTF8", f"the request body is not UTF-8 (byte {exc.start} is {raw[exc.start : exc.start + 1]!r})"
        ) from None
    if not text.strip():
        return {}
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError(
            "NestingTooDeep", f"the body nests lists or objects deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except json.JSONDecodeError as exc:
        raise BodyError("MalformedJSON", f"the request body is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise BodyError("MalformedJSON", f"the request body is not valid JSON: {exc}") from None
    if json_depth_exceeds(value, MAX_JSON_DEPTH):
        raise BodyError("NestingTooDeep", f"the body nests lists or objects deeper than {MAX_JSON_DEPTH} levels")
    return value


def parse_arguments(raw: bytes) -> dict[str, Any]:
    """A call's keyword arguments: the body must be one JSON object."""
    value = parse_json_body(raw)
    if not isinstance(value, dict):
        raise BodyError(
            "WrongBodyType",
            f'the request body must be a JSON object of keyword arguments, e.g. {{"x": 1}}; got a JSON {_json_type(value)}',
        )
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__
