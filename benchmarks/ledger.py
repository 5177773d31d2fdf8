"""What a meter restart and a one-day bill cost as the ledger grows: a ledger that has taken in
10 M lifecycle events (years of a day's traffic, rolled up as the meter does while it runs) against
one that has taken in 10 k (one day), same day of traffic last in both.

    python -m benchmarks.ledger --json OUT [--days 1000] [--events-per-day 10000] [--repetitions 5]

Each day: replicas that start, serve, idle, heartbeat every 2 s and stop, plus request records,
and one pinned replica (min_containers) that runs through every day, serving once a day and
heartbeating every 60 s (within the day's event budget); after each day the meter's roll-up and
checkpoint run, as they do every minute in a live meter. Reported: the
median of `--repetitions` meter restarts (open the ledger, restore the metrics) and one-day bills
of the last day, for both ledgers, and their ratios (`restart_ratio`, `bill_ratio`, large/small).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import median, print_table, write_json
from billing.ledger import Ledger
from billing.meter import Meter

DAY = 86400.0
START = 1_700_006_400.0  # a UTC midnight (2023-11-15): day boundaries stay day boundaries
HEARTBEAT_S = 2.0
REPLICA_LIFETIME_S = 3600.0  # events per replica: ~1800 heartbeats and its transitions
REQUESTS_PER_DAY = 1000
PINNED_HEARTBEAT_S = 60.0


def day_of_traffic(day: int, events_per_day: int) -> tuple[list[dict], list[dict]]:
    """One day: replicas one after another, each started, ready, serving for a while, idle,
    heartbeating, and stopped, until the day holds `events_per_day` events."""
    base = START + day * DAY
    pinned = pinned_replica_day(day)
    # the same short-lived traffic every day (the pinned replica's day-0 start is on top)
    budget = events_per_day - len(pinned_replica_day(1))
    events: list[dict] = []
    replica = 0
    while len(events) < budget:
        rid = f"d{day}-r{replica}"
        t0 = base + replica * (REPLICA_LIFETIME_S + 60)
        beats = int(min(REPLICA_LIFETIME_S, (budget - len(events)) * HEARTBEAT_S) / HEARTBEAT_S)
        life = max(beats, 5) * HEARTBEAT_S

        def ev(kind: str, ts: float, n: int, rid: str = rid) -> dict:
            return {
                "id": f"{rid}:{kind}:{n}",
                "app": "shop",
                "function": f"fn{replica % 4}",
                "replica": rid,
                "kind": kind,
                "ts": ts,
                "gpus": 1.0,
                "accelerator": "H100",
            }

        events += [ev("started", t0, 0), ev("ready", t0 + 5, 0), ev("serving", t0 + 10, 0), ev("idle", t0 + 40, 0)]
        events += [ev("heartbeat", t0 + i * HEARTBEAT_S, i) for i in range(1, max(beats - 5, 1))]
        events.append(ev("stopped", t0 + life, 0))
        replica += 1
    requests = [
        {
            "id": f"d{day}-q{i}",
            "app": "shop",
            "function": f"fn{i % 4}",
            "replica": f"d{day}-r0",
            "status": 200,
            "latency_s": 0.05,
            "bytes_in": 10,
            "bytes_out": 20,
            "ts": base + 10 + i * (DAY - 20) / REQUESTS_PER_DAY,
        }
        for i in range(REQUESTS_PER_DAY)
    ]
    return pinned + events[:budget], requests


def pinned_replica_day(day: int) -> list[dict]:
    """One day of a replica that never stops: started on day 0, serving an hour each day."""
    base = START + day * DAY

    def ev(kind: str, ts: float, n: int) -> dict:
        return {
            "id": f"pinned:{day}:{kind}:{n}",
            "app": "shop",
            "function": "pinned",
            "replica": "pinned",
            "kind": kind,
            "ts": ts,
            "gpus": 1.0,
            "accelerator": "H100",
        }

    events = [ev("started", base, 0), ev("ready", base + 5, 0)] if day == 0 else []
    events += [ev("serving", base + 36_000, 0), ev("idle", base + 39_600, 0)]
    events += [ev("heartbeat", base + 10 + i * PINNED_HEARTBEAT_S, i) for i in range(int(DAY / PINNED_HEARTBEAT_S))]
    return events


def build(path: Path, days: int, events_per_day: int) -> int:
    """A ledger that has taken in `days` days of traffic, rolled up after each day; the events taken."""
    ledger = Ledger(path)
    taken = 0
    for day in range(days):
        events, requests = day_of_traffic(day, events_per_day)
        ledger.apply(events, requests)
        taken += len(events)
        now = START + (day + 1) * DAY + 7200
        while ledger.rollup(now, limit=100) or ledger.checkpoint(now, limit=100):
            pass
        if day and day % 100 == 0:
            print(f"  day {day}/{days}: {taken:,} events taken", file=sys.stderr)
    ledger.conn.close()
    return taken


def timed_restart(path: Path) -> float:
    started = time.perf_counter()
    meter = Meter(str(path))
    took = time.perf_counter() - started
    meter.ledger.conn.close()
    return took


def timed_bill(path: Path, day: int) -> tuple[float, list[dict]]:
    meter = Meter(str(path))
    since = START + day * DAY
    started = time.perf_counter()
    lines = asyncio.run(meter.bill(since=since, until=since + DAY))
    took = time.perf_counter() - started
    meter.ledger.conn.close()
    return took, lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--days", type=int, default=1000, help="days of traffic in the large ledger")
    parser.add_argument("--events-per-day", type=int, default=10_000)
    parser.add_argument("--repetitions", type=int, default=5)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    work = Path(tempfile.mkdtemp(prefix="raygpu-ledger-bench-"))
    sizes = {"small": 1, "large": args.days}
    taken: dict[str, int] = {}
    for name, days in sizes.items():
        print(f"building the {name} ledger ({days} day(s))...", file=sys.stderr)
        started = time.perf_counter()
        taken[name] = build(work / f"{name}.db", days, args.events_per_day)
        print(f"  {taken[name]:,} events in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    runs: dict[str, dict[str, list[float]]] = {name: {"restart_s": [], "bill_s": []} for name in sizes}
    bills: dict[str, list[dict]] = {}
    for rep in range(args.repetitions):
        order = list(sizes) if rep % 2 == 0 else list(reversed(sizes))
        for name in order:
            runs[name]["restart_s"].append(timed_restart(work / f"{name}.db"))
            took, lines = timed_bill(work / f"{name}.db", sizes[name] - 1)
            runs[name]["bill_s"].append(took)
            bills[name] = lines
    medians = {name: {k: median(v) for k, v in figures.items()} for name, figures in runs.items()}
    same_day = [line for line in bills["small"] if line["function"] != "pinned"] == [
        line for line in bills["large"] if line["function"] != "pinned"
    ]
    result = {
        "events": taken,
        "ledger_bytes": {name: (work / f"{name}.db").stat().st_size for name in sizes},
        "median_s": medians,
        "restart_ratio": round(medians["large"]["restart_s"] / medians["small"]["restart_s"], 3),
        "bill_ratio": round(medians["large"]["bill_s"] / medians["small"]["bill_s"], 3),
        "last_day_bills_equal": same_day,  # the short-lived replicas' lines (the pinned one started on day 0)
        "repetitions": args.repetitions,
        "raw": runs,
    }
    print_table(
        "meter restart and one-day bill, large vs small ledger (medians)",
        [
            (
                name,
                f"{taken[name]:,}",
                f"{medians[name]['restart_s'] * 1000:.1f} ms",
                f"{medians[name]['bill_s'] * 1000:.1f} ms",
            )
            for name in sizes
        ]
        + [("ratio", "", f"{result['restart_ratio']:.2f}x", f"{result['bill_ratio']:.2f}x")],
        ("ledger", "events taken", "restart", "one-day bill"),
    )
    write_json(args.json_path, result)


if __name__ == "__main__":
    main()
