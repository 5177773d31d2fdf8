"""Reading a call's JSON body at the gateway: strict UTF-8, bounded numbers and nesting, a JSON
object at the top. Every failure is a BodyError (400) naming the problem. Pure: no Ray."""

from __future__ import annotations

import json
import math
from typing import Any

# Deeper JSON than this is refused before it reaches a replica (pydantic and pickling recurse).
MAX_JSON_DEPTH = 64
# What one body may hold, counted before it is parsed (an upper bound: brackets and commas inside
# strings count too). Parsing costs ~0.1-0.6 us per value, a list or object the most: these bound a
# parse to well under a second wherever it runs.
MAX_JSON_VALUES = 2_000_000
MAX_JSON_CONTAINERS = 200_000
# Bodies up to this size are parsed on the gateway's event loop (a few ms at most); larger ones in
# a body-check worker process, and reach the replica as JSON text it decodes itself.
INLINE_PARSE_BYTES = 256 * 1024


class BodyError(ValueError):
    """A request body the gateway refuses with 400; `error_type` names the problem."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def _refuse_constant(name: str) -> Any:
    raise BodyError("MalformedJSON", f"{name} is not JSON; send numbers as finite decimals")


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and objects deeper than `limit` (iteratively: no recursion)."""
    return _scan(value, limit)[0]


def _scan(value: Any, limit: int) -> tuple[bool, bool]:
    """(nested deeper than `limit`, holds a float that is not finite), level by level."""
    level: list[Any] = [value]
    depth = 0
    while level:
        depth += 1
        if any(type(item) is float and not math.isfinite(item) for item in level):
            return False, True
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            return False, False
        if depth > limit:
            return True, False
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return False, False


def check_shape(raw: bytes) -> None:
    """Refuse, before any parse, a body that holds more JSON values or containers than a call may:
    one pass of C-speed counts (tens of ms for 16 MiB), nothing built. BodyError "BodyTooComplex"."""
    containers = raw.count(b"[") + raw.count(b"{")
    values = containers + raw.count(b",") + 1
    if containers > MAX_JSON_CONTAINERS:
        raise BodyError(
            "BodyTooComplex",
            f"the body holds up to {containers} JSON lists and objects; a call takes at most "
            f"{MAX_JSON_CONTAINERS}: send large data flat (one list of numbers, a base64 string) or as a file",
        )
    if values > MAX_JSON_VALUES:
        raise BodyError(
            "BodyTooComplex",
            f"the body holds up to {values} JSON values; a call takes at most {MAX_JSON_VALUES}: "
            "send large arrays as a base64 string or as a file",
        )


def parses_inline(raw: bytes) -> bool:
    """Whether a body is small enough to parse on the gateway's event loop."""
    return len(raw) <= INLINE_PARSE_BYTES


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
        value = json.loads(text, parse_constant=_refuse_constant)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError(
            "NestingTooDeep", f"the body nests lists or objects deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except json.JSONDecodeError as exc:
        raise BodyError("MalformedJSON", f"the request body is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer past Python's conversion limit
        raise BodyError("NumberTooLarge", f"a number in the body is too long: {exc}") from None
    too_deep, not_finite = _scan(value, MAX_JSON_DEPTH)
    if too_deep:
        raise BodyError("NestingTooDeep", f"the body nests lists or objects deeper than {MAX_JSON_DEPTH} levels")
    if not_finite:
        raise BodyError("NumberTooLarge", "a number in the body does not fit a 64-bit float")
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
