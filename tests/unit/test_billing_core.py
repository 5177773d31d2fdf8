"""Interval and price math on hand-made event streams (pure, no Ray)."""

import datetime as dt
import random
from decimal import Decimal

import pytest
from pydantic import ValidationError

from billing.intervals import LifecycleEvent, bill, replica_intervals
from billing.prices import PriceTable, load_price_table

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC).timestamp()


def ev(kind, ts, replica="r1", gpus=1.0, accelerator="H100", function="f"):
    return LifecycleEvent(
        id=f"{replica}-{kind}-{ts}",
        app="a",
        function=function,
        replica=replica,
        kind=kind,
        ts=ts,
        gpus=gpus,
        accelerator=accelerator,
    )


def table(**overrides):
    data = {
        "default_type": "A10G",
        "min_increment_s": "0",
        "versions": [
            {
                "version": 1,
                "effective_from": "2025-01-01T00:00:00Z",
                "usd_per_gpu_hour": {"H100": "3.60", "A10G": "1.80"},
            }
        ],
    }
    data.update(overrides)
    return PriceTable.model_validate(data)


STREAM = [
    ev("requested", T0),
    ev("started", T0 + 2),
    ev("ready", T0 + 10),
    ev("serving", T0 + 20),
    ev("idle", T0 + 50),
    ev("serving", T0 + 60),
    ev("idle", T0 + 70),
    ev("heartbeat", T0 + 80),
    ev("stopped", T0 + 100),
]


def test_phases_of_one_replica():
    ivs = replica_intervals(STREAM)
    assert [(i.phase, i.start - T0, i.end - T0) for i in ivs] == [
        ("cold_start", 0, 10),
        ("idle", 10, 20),
        ("active", 20, 50),
        ("idle", 50, 60),
        ("active", 60, 70),
        ("idle", 70, 100),
    ]


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
    assert line.cost_usd == {
        "cold_start": Decimal("0.010000"),
        "active": Decimal("0.040000"),
        "idle": Decimal("0.050000"),
    }
    assert line.total_cost_usd == Decimal("0.100000") and line.replica_starts == 1


def test_many_short_pieces_are_rounded_once_per_phase():
    # 40 active pieces of 0.3 s at $3.95/h cost $0.000329166.. each: rounding each piece would bill
    # 40 x $0.000329 = $0.013160, rounding the phase once bills the true $0.013167.
    events = [ev("started", T0), ev("ready", T0 + 1)]
    for i in range(40):
        events += [ev("serving", T0 + 2 + i), ev("idle", T0 + 2.3 + i)]
    events.append(ev("stopped", T0 + 50))
    (line,) = bill(
        replica_intervals(events),
        table(
            versions=[
                {
                    "version": 1,
                    "effective_from": "2025-01-01T00:00:00Z",
                    "usd_per_gpu_hour": {"H100": "3.95", "A10G": "1"},
                }
            ]
        ),
    )
    assert line.gpu_seconds["active"] == Decimal("12.000")
    assert line.cost_usd["active"] == (Decimal("12") * Decimal("3.95") / 3600).quantize(Decimal("0.000001"))
    assert line.cost_usd["active"] == Decimal("0.013167")


def test_gpus_multiply_and_default_type_is_charged_for_untyped_gpus():
    events = [
        ev("started", T0, gpus=2, accelerator=None),
        ev("ready", T0 + 30, gpus=2, accelerator=None),
        ev("stopped", T0 + 60, gpus=2, accelerator=None),
    ]
    (line,) = bill(replica_intervals(events), table())
    assert line.total_gpu_seconds == Decimal("120.000")
    assert line.total_cost_usd == Decimal("0.060000")  # A10G $1.80/h = $0.0005/GPU-s


def test_price_change_mid_interval_splits_it():
    change = T0 + 30
    prices = table(
        versions=[
            {"version": 1, "effective_from": "2025-01-01T00:00:00Z", "usd_per_gpu_hour": {"H100": "3.60", "A10G": "1"}},
            {
                "version": 2,
                "effective_from": dt.datetime.fromtimestamp(change, dt.UTC).isoformat(),
                "usd_per_gpu_hour": {"H100": "7.20", "A10G": "1"},
            },
        ]
    )
    events = [ev("started", T0), ev("ready", T0), ev("stopped", T0 + 60)]
    (line,) = bill(replica_intervals(events), prices)
    assert line.gpu_seconds["idle"] == Decimal("60.000")
    assert line.cost_usd["idle"] == Decimal("0.030000") + Decimal("0.060000")


def test_day_boundary_splits_into_two_days():
    midnight = dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp()
    events = [ev("started", midnight - 100), ev("ready", midnight - 100), ev("stopped", midnight + 50)]
    lines = bill(replica_intervals(events), table(), by_day=True)
    assert [(line.day, line.gpu_seconds["idle"]) for line in lines] == [
        ("2026-03-01", Decimal("100.000")),
        ("2026-03-02", Decimal("50.000")),
    ]


def test_minimum_increment_per_replica_start():
    events = [
        ev("started", T0, replica="short"),
        ev("ready", T0 + 0.2, replica="short"),
        ev("stopped", T0 + 0.4, replica="short"),
    ]
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
        table(versions=[{"version": 1, "effective_from": "2025-01-01T00:00:00Z", "usd_per_gpu_hour": {"A10G": "-1"}}])
    with pytest.raises(KeyError, match="add it to the price table"):
        bill(replica_intervals([ev("started", T0, accelerator="T4"), ev("stopped", T0 + 5, accelerator="T4")]), table())
    with pytest.raises(FileNotFoundError, match="RAYGPU_PRICES"):
        load_price_table(tmp_path / "missing.yaml")


def test_ledger_applies_each_event_and_request_once(tmp_path):
    from billing.ledger import Ledger

    ledger = Ledger(tmp_path / "ledger.db")
    assert ledger.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    event = ev("started", T0).model_dump()
    request = {
        "id": "q1",
        "app": "a",
        "function": "f",
        "replica": "r1",
        "status": 200,
        "latency_s": 0.1,
        "bytes_in": 10,
        "bytes_out": 20,
        "ts": T0,
    }
    assert ledger.apply([event, event], [request]) == ([event], [request])
    assert ledger.apply([event], [request]) == ([], [])  # a resend changes nothing
    assert ledger.request_counts() == {"a/f": {200: 1}}
    assert [e.kind for e in Ledger(tmp_path / "ledger.db").events("a")] == ["started"]


def test_metrics_agree_with_the_bill_and_count_cold_starts():
    from billing.metrics import UsageMetrics

    metrics = UsageMetrics(lost_after_s=1e12)
    second = [
        ev("started", T0 + 5, replica="r2"),
        ev("ready", T0 + 9, replica="r2"),
        ev("heartbeat", T0 + 30, replica="r2"),
    ]  # still alive: billed to its last heartbeat
    metrics.observe_events(list(reversed(STREAM)) + second)  # order within a batch does not matter
    metrics.observe_requests([{"app": "a", "function": "f", "status": 200, "latency_s": 0.2}] * 3)
    families = {f.name: f for f in metrics.registry.collect()}
    exported = {s.labels["phase"]: s.value for s in families["raygpu_gpu_seconds"].samples}
    lines = bill(replica_intervals(STREAM + second), table())
    assert (
        exported
        == {p: float(v) for p, v in lines[0].gpu_seconds.items()}
        == {"cold_start": 14.0, "active": 40.0, "idle": 71.0}
    )
    replicas = {s.labels["state"]: s.value for s in families["raygpu_replicas"].samples}
    assert replicas == {"starting": 0, "idle": 1, "active": 0}
    cold = {s.name: s.value for s in families["raygpu_cold_starts"].samples}
    assert cold["raygpu_cold_starts_total"] == 2
    durations = {
        s.name: s.value for s in families["raygpu_cold_start_duration_seconds"].samples if not s.labels.get("le")
    }
    assert durations["raygpu_cold_start_duration_seconds_sum"] == 14.0
    requests = {s.name: s.value for s in families["raygpu_requests"].samples}
    assert requests["raygpu_requests_total"] == 3


def test_a_silent_replica_leaves_the_gauge_but_keeps_its_time():
    from billing.metrics import UsageMetrics

    metrics = UsageMetrics(lost_after_s=10)
    metrics.observe_events([ev("started", T0), ev("ready", T0 + 4), ev("heartbeat", T0 + 20)])  # long ago
    families = {f.name: f for f in metrics.registry.collect()}
    assert {s.labels["state"]: s.value for s in families["raygpu_replicas"].samples} == {
        "starting": 0,
        "idle": 0,
        "active": 0,
    }
    assert sum(s.value for s in families["raygpu_gpu_seconds"].samples) == 20.0


def test_price_ranges_parse_and_refuse_nonsense():
    from billing.cost import PriceRange

    assert PriceRange.parse("2.00-8.00") == PriceRange(low=Decimal("2.00"), high=Decimal("8.00"))
    assert PriceRange.parse("3.5") == PriceRange(low=Decimal("3.5"), high=Decimal("3.5"))
    with pytest.raises(ValueError, match="LOW-HIGH"):
        PriceRange.parse("cheap")
    with pytest.raises(ValueError, match="above the high end"):
        PriceRange.parse("8-2")


def test_cost_comparison_by_hand():
    from billing.cost import PriceRange, compare_costs

    # two 1-GPU H100 replicas overlapping for 100 s, one hour rented; 50 requests
    stream = [
        ev("started", T0),
        ev("ready", T0 + 10),
        ev("serving", T0 + 10),
        ev("idle", T0 + 370),
        ev("stopped", T0 + 1800),
        ev("started", T0 + 100, replica="r2"),
        ev("ready", T0 + 110, replica="r2"),
        ev("serving", T0 + 110, replica="r2"),
        ev("idle", T0 + 170, replica="r2"),
        ev("stopped", T0 + 200, replica="r2"),
    ]
    intervals = replica_intervals(stream)
    lines = bill(intervals, table())
    out = compare_costs(
        intervals,
        lines,
        50,
        dedicated_usd_per_gpu_hour=PriceRange.parse("2-8"),
        api_usd_per_request=PriceRange.parse("0.01-0.10"),
    )
    # billed: (1800 + 100) GPU-s at $3.60/h = $1.90; active 420 GPU-s
    assert out.billed_gpu_seconds == Decimal(1900) and out.active_gpu_seconds == Decimal(420)
    options = {o.option: (o.low_usd, o.high_usd) for o in out.options}
    assert options == {
        "serverless": (Decimal("1.90"), Decimal("1.90")),
        "dedicated": (Decimal(4), Decimal(16)),
        "per_request": (Decimal("0.5"), Decimal("5")),
    }
    assert (out.peak_replicas, out.peak_gpus, out.rented_gpu_hours) == (2, Decimal(2), 2)
    assert out.cheapest == "serverless" and not out.cheapest_at_any_price
    assert out.utilisation == Decimal("0.0583")  # 420 / 7200
    # break-even: 420 * 2 / 3600 / 1.90 and 420 * 8 / 3600 / 1.90
    assert (out.break_even_utilisation.low, out.break_even_utilisation.high) == (Decimal("0.1228"), Decimal("0.4912"))
    assert out.serverless_usd_per_request == Decimal("0.038")
