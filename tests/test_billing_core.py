"""Interval and price math on hand-made event streams (pure, no Ray)."""

import datetime as dt
import random
from decimal import Decimal

import pytest
from pydantic import ValidationError

from billing.intervals import LifecycleEvent, bill, replica_intervals
from billing.prices import PriceTable, load_price_table

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp()


def ev(kind, ts, replica="r1", gpus=1.0, accelerator="H100", function="f"):
    return LifecycleEvent(id=f"{replica}-{kind}-{ts}", app="a", function=function, replica=replica,
                          kind=kind, ts=ts, gpus=gpus, accelerator=accelerator)


def table(**overrides):
    data = {"default_type": "A10G", "min_increment_s": "0", "versions": [
        {"version": 1, "effective_from": "2025-01-01T00:00:00Z",
         "usd_per_gpu_hour": {"H100": "3.60", "A10G": "1.80"}}]}
    data.update(overrides)
    return PriceTable.model_validate(data)


STREAM = [ev("requested", T0), ev("started", T0 + 2), ev("ready", T0 + 10), ev("serving", T0 + 20),
          ev("idle", T0 + 50), ev("serving", T0 + 60), ev("idle", T0 + 70), ev("heartbeat", T0 + 80),
          ev("stopped", T0 + 100)]


def test_phases_of_one_replica():
    ivs = replica_intervals(STREAM)
    assert [(i.phase, i.start - T0, i.end - T0) for i in ivs] == [
        ("cold_start", 0, 10), ("idle", 10, 20), ("active", 20, 50), ("idle", 50, 60), ("active", 60, 70),
        ("idle", 70, 100)]


def test_out_of_order_and_duplicate_events_give_the_same_intervals():
    shuffled = STREAM + STREAM[2:5]  # duplicates carry the same ids
    random.Random(0).shuffle(shuffled)
    assert replica_intervals(shuffled) == replica_intervals(STREAM)


def test_missing_stop_closes_at_the_last_heartbeat():
    ivs = replica_intervals(STREAM[:-1])
    assert ivs[-1].phase == "idle" and ivs[-1].end == T0 + 80


def test_bill_by_phase_in_decimal():
    lines = bill(replica_intervals(STREAM), table())
    (line,) = lines
    assert line.gpu_seconds == {"cold_start": Decimal("10.000"), "active": Decimal("40.000"), "idle": Decimal("50.000")}
    # $3.60/h = $0.001 per GPU-second
    assert line.cost_usd == {"cold_start": Decimal("0.010000"), "active": Decimal("0.040000"),
                             "idle": Decimal("0.050000")}
    assert line.total_cost_usd == Decimal("0.100000") and line.replica_starts == 1


def test_gpus_multiply_and_default_type_is_charged_for_untyped_gpus():
    events = [ev("started", T0, gpus=2, accelerator=None), ev("ready", T0 + 30, gpus=2, accelerator=None),
              ev("stopped", T0 + 60, gpus=2, accelerator=None)]
    (line,) = bill(replica_intervals(events), table())
    assert line.total_gpu_seconds == Decimal("120.000")
    assert line.total_cost_usd == Decimal("0.060000")  # A10G $1.80/h = $0.0005/GPU-s


def test_price_change_mid_interval_splits_it():
    change = T0 + 30
    prices = table(versions=[
        {"version": 1, "effective_from": "2025-01-01T00:00:00Z", "usd_per_gpu_hour": {"H100": "3.60", "A10G": "1"}},
        {"version": 2, "effective_from": dt.datetime.fromtimestamp(change, dt.timezone.utc).isoformat(),
         "usd_per_gpu_hour": {"H100": "7.20", "A10G": "1"}}])
    events = [ev("started", T0), ev("ready", T0), ev("stopped", T0 + 60)]
    (line,) = bill(replica_intervals(events), prices)
    assert line.gpu_seconds["idle"] == Decimal("60.000")
    assert line.cost_usd["idle"] == Decimal("0.030000") + Decimal("0.060000")


def test_day_boundary_splits_into_two_days():
    midnight = dt.datetime(2026, 3, 2, tzinfo=dt.timezone.utc).timestamp()
    events = [ev("started", midnight - 100), ev("ready", midnight - 100), ev("stopped", midnight + 50)]
    lines = bill(replica_intervals(events), table(), by_day=True)
    assert [(line.day, line.gpu_seconds["idle"]) for line in lines] == [
        ("2026-03-01", Decimal("100.000")), ("2026-03-02", Decimal("50.000"))]


def test_minimum_increment_per_replica_start():
    events = [ev("started", T0, replica="short"), ev("ready", T0 + 0.2, replica="short"),
              ev("stopped", T0 + 0.4, replica="short")]
    (line,) = bill(replica_intervals(events), table(min_increment_s="1"))
    assert line.total_gpu_seconds == Decimal("1.000")
    (line,) = bill(replica_intervals(events), table(min_increment_s="0"))
    assert line.total_gpu_seconds == Decimal("0.400")


def test_shipped_price_table_and_validation_errors(tmp_path):
    prices = load_price_table()
    assert prices.rate(prices.version_at(T0), "H100") == Decimal("3.95")
    assert prices.min_increment_s == Decimal("1")
    with pytest.raises(ValidationError, match="default_type"):
        table(default_type="B300")
    with pytest.raises(ValidationError, match="negative"):
        table(versions=[{"version": 1, "effective_from": "2025-01-01T00:00:00Z",
                         "usd_per_gpu_hour": {"A10G": "-1"}}])
    with pytest.raises(KeyError, match="add it to the price table"):
        bill(replica_intervals([ev("started", T0, accelerator="T4"), ev("stopped", T0 + 5, accelerator="T4")]), table())
    with pytest.raises(FileNotFoundError, match="RAYGPU_PRICES"):
        load_price_table(tmp_path / "missing.yaml")


def test_ledger_applies_each_event_and_request_once(tmp_path):
    from billing.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.db")
    assert ledger.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    event = ev("started", T0).model_dump()
    request = {"id": "q1", "app": "a", "function": "f", "replica": "r1", "status": 200, "latency_s": 0.1,
               "bytes_in": 10, "bytes_out": 20, "ts": T0}
    assert ledger.apply([event, event], [request]) == ([event], [request])
    assert ledger.apply([event], [request]) == ([], [])  # a resend changes nothing
    assert ledger.request_counts() == {"a/f": {200: 1}}
    assert [e.kind for e in Ledger(tmp_path / "ledger.db").events("a")] == ["started"]
