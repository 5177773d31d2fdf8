"""The gateway's body rules: every malformed body is a BodyError (400) naming the problem, and the
arrival buffer stays bounded while the store is away."""

import json

import pytest

from deployments.calls.arrivals import ArrivalBuffer
from deployments.gateway.body import MAX_JSON_DEPTH, BodyError, json_depth_exceeds, parse_arguments, parse_json_body


def refused(raw: bytes) -> BodyError:
    with pytest.raises(BodyError) as caught:
        parse_arguments(raw)
    return caught.value


@pytest.mark.parametrize(
    "raw, error_type, says",
    [
        (b'{"x": ' + b"9" * 5000 + b"}", "NumberTooLarge", "5000 digits"),
        (b'{"x": 1' + b"0" * 5000 + b".5}", "NumberTooLarge", "64-bit float"),
        (b'{"x": 1e999}', "NumberTooLarge", "64-bit float"),
        (b'{"x": NaN}', "MalformedJSON", "NaN"),
        (b'{"x": -Infinity}', "MalformedJSON", "Infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "NestingTooDeep", str(MAX_JSON_DEPTH)),
        (b'{"x": ' + b"[" * 500 + b"]" * 500 + b"}", "NestingTooDeep", str(MAX_JSON_DEPTH)),
        (b'{"x": "\xff\xfe"}', "InvalidUTF8", "byte 7"),
        (b"\xef\xbb\xbf" + b"\xc3\x28", "InvalidUTF8", "not UTF-8"),
        (b'{"x": 1', "MalformedJSON", "not valid JSON"),
        (b"[1, 2]", "WrongBodyType", "array"),
        (b'"hello"', "WrongBodyType", "string"),
        (b"3", "WrongBodyType", "number"),
        (b"null", "WrongBodyType", "null"),
        (b"true", "WrongBodyType", "boolean"),
    ],
)
def test_malformed_bodies_are_refused_with_the_reason(raw, error_type, says):
    error = refused(raw)
    assert error.error_type == error_type and says in error.message, error.message


def test_acceptable_bodies_parse():
    assert parse_arguments(b"") == {} and parse_arguments(b"  \n") == {}
    assert parse_arguments(b'{"n": 12345678901234567890, "f": 1.5e300, "s": "\xc3\xa9"}') == {
        "n": 12345678901234567890,
        "f": 1.5e300,
        "s": "é",
    }
    nested = json.dumps({"x": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))}).encode()
    assert parse_arguments(nested)
    assert parse_json_body(b"[1]") == [1]


def test_depth_is_measured_without_recursion():
    deep: list = []
    for _ in range(50_000):
        deep = [deep]
    assert json_depth_exceeds(deep, 10) and not json_depth_exceeds([[1], {"a": [2]}], 3)


def test_the_arrival_buffer_drops_the_oldest_beyond_its_capacity():
    buffer = ArrivalBuffer(3)
    for i in range(5):
        buffer.add(("app", "f", float(i)))
    assert len(buffer) == 3 and buffer.dropped == 2
    batch = buffer.take()
    assert [a[2] for a in batch] == [2.0, 3.0, 4.0] and len(buffer) == 0
    buffer.add(("app", "f", 5.0))
    buffer.add(("app", "f", 6.0))
    buffer.put_back(batch)  # the store was away: the newest arrivals win
    assert [a[2] for a in buffer.take()] == [4.0, 5.0, 6.0] and buffer.dropped == 4
    with pytest.raises(ValueError):
        ArrivalBuffer(0)


def test_replica_answers_serialise_numpy_and_torch_values():
    import numpy as np
    import torch

    from deployments.replicas.base import encode_json

    payload = {"t": torch.tensor([[1.5, 2.0]]), "a": np.arange(3), "s": np.float32(0.5), "i": np.int64(7)}
    assert json.loads(encode_json(payload)) == {"t": [[1.5, 2.0]], "a": [0, 1, 2], "s": 0.5, "i": 7}
    with pytest.raises((TypeError, ValueError)):
        encode_json({"x": object()})
    with pytest.raises(ValueError):
        encode_json({"x": float("nan")})  # not JSON: refused, never sent as NaN


def test_internal_errors_answer_an_id_that_the_gateway_log_holds():
    import logging

    from deployments.gateway.answers import internal_error, logger

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        try:
            raise KeyError("secret detail")
        except KeyError:
            response = internal_error("call of shop/add")
    finally:
        logger.removeHandler(handler)
    error = json.loads(response.body)["error"]
    assert response.status_code == 500 and error["type"] == "InternalError"
    assert "secret" not in response.body.decode() and len(error["id"]) == 8
    logged = [r.getMessage() for r in records]
    assert any(error["id"] in m for m in logged) and records[0].exc_info[0] is KeyError


def test_which_functions_a_deploy_checks_before_the_version_goes_live():
    from deployments.spec import FunctionSpec
    from raygpu.ops.rollout import functions_to_check

    specs = {
        "kept": FunctionSpec(name="kept", min_containers=1),
        "changed": FunctionSpec(name="changed"),
        "same": FunctionSpec(name="same"),
        "new": FunctionSpec(name="new"),
    }
    digests = {"kept": "k2", "changed": "c2", "same": "s1", "new": "n1"}
    previous = {"kept": "k1", "changed": "c1", "same": "s1"}
    assert functions_to_check(specs, digests, previous, check=False) == ({"kept"}, set())
    assert functions_to_check(specs, digests, previous, check=True) == ({"kept"}, {"changed", "new"})


def test_a_new_version_starts_as_warm_as_the_live_one_as_far_as_free_gpus_allow():
    from deployments.spec import FunctionSpec
    from raygpu.ops.rollout import warm_handoff

    specs = {
        "cpu": FunctionSpec(name="cpu", max_containers=3),
        "gpu": FunctionSpec(name="gpu", gpu=1, max_containers=5),
        "pinned": FunctionSpec(name="pinned", gpu=1, min_containers=1),
        "cold": FunctionSpec(name="cold", gpu=1),
    }
    running = {"cpu": 5, "gpu": 4, "pinned": 1}
    assert warm_handoff(running, specs, free_gpus=2) == {"cpu": 3, "gpu": 2, "pinned": 1, "cold": 0}
    assert warm_handoff(running, specs, free_gpus=0)["gpu"] == 0
