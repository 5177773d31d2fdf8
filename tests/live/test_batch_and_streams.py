"""Batches and streams on the real cluster: `map`/`starmap` from the decorated function and from
`lookup`, `raygpu map` on a JSONL file, and generators streamed over HTTP (ndjson and SSE) and to
Python, stopped when their caller leaves, billed busy while they stream."""

import json
import threading
import time

import pytest
import requests
from conftest import APPS

import raygpu
from raygpu.sdk.errors import RemoteCallError


@pytest.fixture(scope="module")
def batch(cluster):
    return cluster.deployed_app(APPS / "batch.py")


def replicas(cluster, fn: str) -> int:
    f = next(f for f in cluster.status("batch").functions if f.name == fn)
    return f.replicas.running + f.replicas.starting


@pytest.mark.slow
def test_map_of_200_inputs_from_the_decorated_function_returns_the_failure_in_place_and_scales(cluster, batch):
    peak = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], replicas(cluster, "square"))
            time.sleep(0.3)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = list(batch.functions["square"].map(range(200), kwargs={"pause": 0.1}, return_exceptions=True))
    finally:
        done.set()
        watcher.join()
    assert len(out) == 200
    assert [o for i, o in enumerate(out) if i != 13] == [i * i for i in range(200) if i != 13]
    assert isinstance(out[13], RemoteCallError) and out[13].error_type == "ValueError"
    assert "unlucky" in str(out[13])
    assert peak[0] >= 2, "the batch did not scale the function past one replica"
    cluster.wait_for(lambda: replicas(cluster, "square") == 0, timeout=90, what="square to scale back to zero")


def test_map_from_lookup_raises_the_first_failure_after_the_outputs_before_it(cluster, batch):
    square = raygpu.lookup("batch", "square")
    seen = []
    with pytest.raises(RemoteCallError, match="unlucky") as failure:
        for value in square.map(range(200)):
            seen.append(value)
    assert failure.value.status == 500 and failure.value.error_type == "ValueError"
    assert seen == [i * i for i in range(13)]


def test_unordered_map_starmap_positional_calls_and_class_methods(cluster, batch):
    square = raygpu.lookup("batch", "square")
    assert sorted(square.map([1, 2, 3], [10, 20, 30], order_outputs=False)) == [11, 24, 39]
    assert list(square.starmap([(2, 1), (3, 2)])) == [5, 11]
    assert square.remote(4, offset=1) == 17
    assert batch.functions["square"].remote(5) == 25
    mul = raygpu.lookup("batch", "Scaler").mul
    assert list(mul.map([1, 2, 3], kwargs={"y": 2})) == [6, 12, 18]
    with pytest.raises(ValueError, match="same length; they have 2, 1"):
        square.map([1, 2], [1])
    with pytest.raises(ValueError, match="same length"):
        list(square.map(iter([1, 2]), iter([1])))
    with pytest.raises(TypeError, match="takes 3 positional argument"):
        square.remote(1, 2, 3, 4)
    with pytest.raises(TypeError, match="multiple values for argument 'x'"):
        list(square.starmap([(1,)], kwargs={"x": 2}))


def test_raygpu_map_writes_outputs_in_input_order_with_the_failing_line(cluster, batch, tmp_path):
    inputs = tmp_path / "inputs.jsonl"
    lines = [{"x": x, "offset": 1} for x in range(30)]
    inputs.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    out_path = tmp_path / "out.jsonl"
    out = cluster.cli("map", "batch/square", str(inputs), "-o", str(out_path))
    assert out.returncode == 1, out.stderr
    assert "1 of 30 input(s) failed" in out.stderr
    written = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert len(written) == 30
    assert written[13] == {"error": {"type": "ValueError", "message": "13 is unlucky"}}
    assert [w for i, w in enumerate(written) if i != 13] == [x * x + 1 for x in range(30) if x != 13]

    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"x": 2}\n{"x": 3, "y": 2}\n')
    out = cluster.cli("map", "batch/Scaler/mul", str(ok))
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == [6, 18]


def test_raygpu_map_refuses_a_bad_input_file_before_calling_anything(cluster, batch, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n[1, 2]\n')
    out = cluster.cli("map", "batch/square", str(bad))
    assert out.returncode == 2 and "line 2 is a JSON list" in out.stderr
    bad.write_text('{"x": 1}\n{"x": \n')
    out = cluster.cli("map", "batch/square", str(bad))
    assert out.returncode == 2 and "line 2 is not JSON" in out.stderr
    out = cluster.cli("map", "batch/nothing", str(APPS / "batch.py"))
    assert out.returncode == 2
    good = tmp_path / "good.jsonl"
    good.write_text('{"x": 1}\n')
    out = cluster.cli("map", "batch/nothing", str(good))
    assert out.returncode == 1 and "has no function or class 'nothing'" in out.stderr


def test_a_generator_streams_ndjson_items_before_its_last_one_is_produced(cluster, batch):
    with requests.post(f"{cluster.url}/batch/count", json={"n": 4, "delay": 0.4}, stream=True, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        received = []
        for line in r.iter_lines():
            received.append((json.loads(line), time.time()))
    items = [item for item, _ in received]
    assert [item["i"] for item in items] == [0, 1, 2, 3]
    first_received_at = received[0][1]
    assert first_received_at < items[-1]["at"], "the first item arrived only after the last was produced"


def test_a_generator_streams_server_sent_events_when_asked(cluster, batch):
    with requests.post(
        f"{cluster.url}/batch/count_async",
        json={"n": 3},
        headers={"Accept": "text/event-stream"},
        stream=True,
        timeout=120,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.text
    assert text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_an_error_after_the_first_item_ends_the_stream_with_an_error_item(cluster, batch):
    r = requests.post(f"{cluster.url}/batch/fail_after", json={"n": 2}, timeout=120)
    assert r.status_code == 200
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines == [0, 1, {"error": {"type": "ValueError", "message": "broke after its items"}}]
    r = requests.post(
        f"{cluster.url}/batch/fail_after", json={"n": 1}, headers={"Accept": "text/event-stream"}, timeout=120
    )
    assert r.text.startswith("data: 0\n\nevent: error\ndata: ") and "broke after its items" in r.text
    # failing before any item is an ordinary error answer
    r = requests.post(f"{cluster.url}/batch/fail_after", json={"n": 0}, timeout=120)
    assert r.status_code == 500 and r.json()["error"]["type"] == "ValueError"
    r = requests.post(f"{cluster.url}/batch/count", json={"n": "many"}, timeout=120)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "n"


def test_remote_gen_iterates_items_from_lookup_and_the_decorated_function(cluster, batch):
    assert [item["i"] for item in raygpu.lookup("batch", "count").remote_gen(3)] == [0, 1, 2]
    assert list(batch.functions["count_async"].remote_gen(n=4)) == [0, 1, 2, 3]
    assert list(raygpu.lookup("batch", "Scaler").words.remote_gen("a b c")) == ["A", "B", "C"]
    r = requests.post(f"{cluster.url}/batch/Scaler/words", json={"text": "x y"}, timeout=120)
    assert r.text == '"X"\n"Y"\n'
    items = []
    with pytest.raises(RemoteCallError, match="broke after its items"):
        for item in raygpu.lookup("batch", "fail_after").remote_gen(2):
            items.append(item)
    assert items == [0, 1]
    with pytest.raises(RemoteCallError, match="yields its results"):
        raygpu.lookup("batch", "count").remote(n=1)
    with pytest.raises(RemoteCallError, match="returns one result"):
        raygpu.lookup("batch", "square").remote_gen(1)
    with pytest.raises(RemoteCallError, match="yields its results"):
        raygpu.lookup("batch", "count").map([1])


@pytest.mark.parametrize("function", ["ticker", "ticker_async"])
def test_a_caller_that_disconnects_stops_the_generator_within_a_second(cluster, batch, tmp_path, function):
    marker = tmp_path / f"{function}.stopped"
    with requests.post(f"{cluster.url}/batch/{function}", json={"marker": str(marker)}, stream=True, timeout=120) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    left_at = time.time()
    cluster.wait_for(marker.exists, timeout=10, interval=0.05, what=f"{function} to stop")
    assert float(marker.read_text()) - left_at < 1.0


def test_remote_gen_closed_early_stops_the_generator(cluster, batch, tmp_path):
    marker = tmp_path / "remote_gen.stopped"
    items = raygpu.lookup("batch", "ticker").remote_gen(str(marker))
    next(items), next(items)
    items.close()
    left_at = time.time()
    cluster.wait_for(marker.exists, timeout=10, interval=0.05, what="ticker to stop")
    assert float(marker.read_text()) - left_at < 1.0


def test_the_bill_counts_the_replica_busy_while_it_streams(cluster, batch):
    import ray

    from billing.constants import METER_ACTOR_NAME

    meter = ray.get_actor(METER_ACTOR_NAME, namespace="raygpu")
    started = time.monotonic()
    assert list(raygpu.lookup("batch", "streamed").remote_gen(8, 0.25)) == list(range(8))
    streamed_s = time.monotonic() - started

    def active_seconds():
        intervals = ray.get(meter.intervals.remote("batch", "streamed"))
        return sum(iv["end"] - iv["start"] for iv in intervals if iv["phase"] == "active")

    cluster.wait_for(lambda: active_seconds() >= 8 * 0.25, timeout=30, what="the stream's active time in the ledger")
    assert active_seconds() <= streamed_s + 0.5
