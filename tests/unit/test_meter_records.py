"""The meter on a real SQLite ledger, in-process: invalid records are refused before they are
written, and invalid rows an older version wrote are quarantined instead of stopping the meter."""

import asyncio
import sqlite3
import time

from billing.ledger import Ledger
from billing.meter import Meter

T0 = time.time() - 600  # recent: replicas silent for an hour are rolled up as gone


def event(i: int, kind: str = "heartbeat", **over) -> dict:
    return {
        "id": f"e{i}",
        "app": "shop",
        "function": "add",
        "replica": "r1",
        "kind": kind,
        "ts": T0 + i,
        "gpus": 1.0,
        "accelerator": "H100",
    } | over


def request(i: int, **over) -> dict:
    return {
        "id": f"q{i}",
        "app": "shop",
        "function": "add",
        "replica": "r1",
        "status": 200,
        "latency_s": 0.5,
        "bytes_in": 1,
        "bytes_out": 2,
        "ts": T0 + i,
    } | over


def meter_of(path) -> Meter:
    meter = Meter(str(path))
    meter._known_units, meter._known_at = {"shop/add"}, time.monotonic() + 3600  # as if the store said so
    meter._rolled_at = float("inf")  # roll-ups only when a test asks for one
    return meter


def test_invalid_records_are_refused_and_the_rest_of_the_batch_is_kept(tmp_path):
    meter = meter_of(tmp_path / "ledger.db")
    batch = {
        "events": [
            event(1, "started"),
            event(2, "exploded"),  # unknown kind
            event(3, ts=float("nan")),
            event(4, ts=12.0),  # 1970
            event(5, gpus=-1.0),
            {"id": "x"},
            "not a record",
            event(6, "ready"),
        ],
        "requests": [request(1), request(2, status=1000), request(3, latency_s="slow")],
        "start_phases": [{"app": "shop", "function": "add", "replica": "r1", "phases": {"init": -3.0}, "ts": T0}],
    }
    stored = asyncio.run(meter.record(batch))
    assert stored == 3 and meter.rejected == 9
    assert [e.kind for e in meter.ledger.events()] == ["started", "ready"]
    assert [r["id"] for r in meter.ledger.requests()] == ["q1"]
    assert asyncio.run(meter.record(batch)) == 0  # an idempotent resend
    assert asyncio.run(meter.record(["not", "a", "batch"])) == 0


def test_invalid_rows_already_in_the_ledger_are_quarantined_not_fatal(tmp_path):
    path = tmp_path / "ledger.db"
    Ledger(path).apply([event(1, "started"), event(2, "ready")], [request(1)])
    conn = sqlite3.connect(path)  # what an older meter could write
    conn.execute(
        "INSERT INTO events (id, app, function, replica, kind, ts, gpus, accelerator) "
        "VALUES ('bad', 'shop', 'add', 'r1', 'exploded', ?, 1.0, 'H100')",
        (T0 + 3,),
    )
    conn.execute(
        "INSERT INTO requests (id, app, function, replica, status, latency_s, bytes_in, bytes_out, ts) "
        "VALUES ('badq', 'shop', 'add', 'r1', 200, 'slow', 1, 2, ?)",
        (T0 + 4,),
    )
    conn.commit()
    conn.close()
    meter = meter_of(path)  # starts: replays the ledger into the metrics
    assert [e.kind for e in meter.ledger.events()] == ["started", "ready"]
    assert [r["id"] for r in meter.ledger.requests()] == ["q1"]
    quarantined = meter.ledger.quarantined()
    assert sorted(q["source"] for q in quarantined) == ["events", "requests"]
    assert all(q["reason"] for q in quarantined)
    assert asyncio.run(meter.bill("shop"))  # billing works on what is left


def test_a_bill_whose_since_cuts_an_interval_matches_a_hand_computation(tmp_path):
    from decimal import Decimal

    meter = meter_of(tmp_path / "ledger.db")
    timeline = [("started", 0), ("ready", 10), ("serving", 20), ("idle", 50), ("heartbeat", 60), ("stopped", 100)]
    events = [event(i, kind, ts=T0 + offset, gpus=2.0) for i, (kind, offset) in enumerate(timeline)]
    assert asyncio.run(meter.record({"events": events})) == len(events)
    per_second = Decimal("3.95") / 3600
    for rolled_up in (False, True):  # from the raw events, then from the intervals they were rolled into
        if rolled_up:
            assert asyncio.run(meter.roll_up()) == 1 and meter.ledger.events() == []
        (line,) = asyncio.run(meter.bill("shop", since=T0 + 30, until=T0 + 80))
        # since = T0+30 cuts the active interval [20, 50): 20 s of it count; idle [50, 100) is cut at 80: 30 s
        assert Decimal(line["gpu_seconds"]["cold_start"]) == 0
        assert Decimal(line["gpu_seconds"]["active"]) == Decimal("40.000")  # 20 s x 2 GPUs
        assert Decimal(line["gpu_seconds"]["idle"]) == Decimal("60.000")  # 30 s x 2 GPUs
        assert Decimal(line["cost_usd"]["active"]) == (40 * per_second).quantize(Decimal("0.000001"))
        assert Decimal(line["cost_usd"]["idle"]) == (60 * per_second).quantize(Decimal("0.000001"))
        (whole,) = asyncio.run(meter.bill("shop"))
        assert {p: Decimal(v) for p, v in whole["gpu_seconds"].items()} == {
            "cold_start": Decimal("20.000"),
            "active": Decimal("60.000"),
            "idle": Decimal("120.000"),
        }


def test_a_restarted_meter_exports_what_it_did_before_rolling_up_and_after(tmp_path):
    from prometheus_client import generate_latest

    def exported(meter: Meter) -> dict[str, float]:
        lines = generate_latest(meter.metrics.registry).decode().splitlines()
        wanted = (
            "raygpu_gpu_seconds_total",
            "raygpu_requests_total",
            "raygpu_cold_starts_total",
            "raygpu_request_duration_seconds_count",
            "raygpu_request_duration_seconds_sum",
            "raygpu_cold_start_phase_seconds_count",
        )
        return {
            line.rsplit(" ", 1)[0]: round(float(line.rsplit(" ", 1)[1]), 6) for line in lines if line.startswith(wanted)
        }

    path = tmp_path / "ledger.db"
    meter = meter_of(path)
    timeline = [("started", 0), ("ready", 10), ("serving", 20), ("idle", 50), ("stopped", 100)]
    batch = {
        "events": [event(i, kind, ts=T0 + offset) for i, (kind, offset) in enumerate(timeline)]
        + [event(10 + i, kind, ts=T0 + offset, replica="r2") for i, (kind, offset) in enumerate(timeline[:3])],
        "requests": [request(i, latency_s=0.1 * i) for i in range(5)],
        "start_phases": [{"app": "shop", "function": "add", "replica": "r1", "phases": {"imports": 1.5}, "ts": T0}],
    }
    asyncio.run(meter.record(batch))
    before = exported(meter)
    restarted = meter_of(path)
    assert exported(restarted) == before
    assert asyncio.run(restarted.roll_up()) == 1  # r1 stopped; r2 still runs
    assert exported(meter_of(path)) == before  # restored from the totals, r2 replayed from its events
    assert before['raygpu_requests_total{app="shop",function="add",status="200"}'] == 5.0


def test_a_long_running_replica_is_checkpointed_and_bills_as_if_it_were_not(tmp_path):
    from prometheus_client import generate_latest

    start = time.time() - 9000

    def beats(first: int, last: int, replica: str = "pinned") -> list[dict]:
        return [event(100_000 + t, ts=start + t, replica=replica) for t in range(first, last, 2)]

    def transition(i: int, kind: str, t: int) -> dict:
        return event(i, kind, ts=start + t, replica="pinned")

    first_part = [transition(1, "started", 0), transition(2, "ready", 10), transition(3, "serving", 20)]
    first_part += [transition(4, "idle", 50), *beats(60, 3000)]
    second_part = [transition(5, "serving", 3100), transition(6, "idle", 3200), *beats(3002, 3500)]

    checkpointed, reference = meter_of(tmp_path / "a.db"), meter_of(tmp_path / "b.db")
    for meter in (checkpointed, reference):
        asyncio.run(meter.record({"events": first_part}))
    assert checkpointed.ledger.checkpoint(time.time(), older_than_s=100) == 1
    assert checkpointed.ledger.events() == []  # its 1,500 events are gone, its open phase kept
    for meter in (checkpointed, reference):
        asyncio.run(meter.record({"events": second_part + first_part[:3]}))  # with a resend of old events
    assert len(checkpointed.ledger.events()) < 260
    assert checkpointed.ledger.checkpoint(time.time(), older_than_s=100) == 1

    def bills(meter: Meter) -> list:
        return [
            asyncio.run(meter.bill("shop", since=since, until=until))
            for since, until in ((None, None), (start + 30, start + 3150), (start + 3150, None))
        ]

    assert bills(checkpointed) == bills(reference)
    metric_lines = [
        line
        for line in generate_latest(meter_of(tmp_path / "a.db").metrics.registry).decode().splitlines()
        if line.startswith(("raygpu_gpu_seconds_total", "raygpu_cold_starts_total"))
    ]
    reference_lines = [
        line
        for line in generate_latest(meter_of(tmp_path / "b.db").metrics.registry).decode().splitlines()
        if line.startswith(("raygpu_gpu_seconds_total", "raygpu_cold_starts_total"))
    ]
    assert metric_lines == reference_lines and metric_lines
