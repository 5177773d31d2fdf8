"""Loaders of the public traces into per-function arrivals with service times (no Ray).

- azure2019: Azure Functions 2019 (ATC'20) `invocations.csv` (per-minute counts per function;
  arrivals spread uniformly at random inside each minute, seed 0) joined with `durations.csv`
  beside it (average service time per function);
- azure2021: Azure Functions 2021 per-invocation rows `app,func,end_timestamp,duration`
  (arrival = end - duration);
- azurellm2023: Azure LLM inference 2023 `TIMESTAMP,ContextTokens,GeneratedTokens`, one function,
  service time 0.02 s per generated token + 0.0002 s per context token.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("azure2019", "azure2021", "azurellm2023")
LLM_S_PER_GENERATED_TOKEN = 0.02
LLM_S_PER_CONTEXT_TOKEN = 0.0002
DEFAULT_SERVICE_S = 1.0  # a function missing from durations.csv


DISPLAY_PART_CHARS = 8  # each part of a function's key shown in tables (keys are whole names)


@dataclass
class FunctionTrace:
    name: str  # the whole key: distinct functions never share one
    arrivals: list[float]  # seconds from the trace start, sorted
    service_s: list[float]  # per arrival
    trigger: str = ""

    @property
    def display_name(self) -> str:
        """The key abbreviated for tables: each `:`-separated part cut to a few characters."""
        return ":".join(part[:DISPLAY_PART_CHARS] for part in self.name.split(":"))


@dataclass
class Trace:
    format: str
    path: str
    functions: list[FunctionTrace] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def invocations(self) -> int:
        return sum(len(f.arrivals) for f in self.functions)

    def find(self, name: str) -> FunctionTrace:
        """The function keyed `name`, or the only one whose key or display name starts with it."""
        exact = [f for f in self.functions if f.name == name]
        if exact:
            return exact[0]
        matches = [f for f in self.functions if f.name.startswith(name) or f.display_name.startswith(name)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise KeyError(f"the trace has no function {name!r}")
        raise KeyError(f"{name!r} names {len(matches)} functions of the trace; give more of the name")


HALVES = ("even", "odd")


def half_of(hash_function: str) -> str:
    """Which half of the 2019 functions a HashFunction is in: the parity of its SHA-1. Knobs are
    chosen on the even half and results reported on the odd one, so no policy is judged on the
    functions it was tuned on."""
    return HALVES[int(hashlib.sha1(hash_function.encode()).hexdigest(), 16) % 2]


def load_trace(path: str | Path, fmt: str, *, seed: int = 0, half: str | None = None) -> Trace:
    """A trace file as per-function arrivals; `half` ("even" or "odd", azure2019 only) keeps the
    functions of that half (see half_of)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown trace format {fmt!r}; use one of {', '.join(FORMATS)}")
    if half is not None and (half not in HALVES or fmt != "azure2019"):
        raise ValueError(f"half must be one of {', '.join(HALVES)}, for azure2019 traces only")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such trace file")
    if fmt == "azure2019":
        return _load_azure2019(path, seed, half)
    loader = {"azure2021": _load_azure2021, "azurellm2023": _load_llm2023}[fmt]
    return loader(path, seed)


def _load_azure2019(path: Path, seed: int, half: str | None = None) -> Trace:
    durations: dict[str, float] = {}
    durations_path = path.with_name("durations.csv")
    if durations_path.exists():
        with durations_path.open() as f:
            for row in csv.DictReader(f):
                key = f"{row['HashOwner']}:{row['HashApp']}:{row['HashFunction']}"
                durations[key] = float(row["Average"]) / 1000.0
    rng = random.Random(seed)
    trace = Trace(format="azure2019", path=str(path))
    with path.open() as f:
        reader = csv.reader(f)
        header = next(reader)
        minute_columns = header[4:]
        first_minute = int(minute_columns[0])
        trace.duration_s = 60.0 * len(minute_columns)
        for row in reader:
            if half is not None and half_of(row[2]) != half:
                continue
            key = f"{row[0]}:{row[1]}:{row[2]}"
            service = durations.get(key, DEFAULT_SERVICE_S)
            arrivals: list[float] = []
            for column, count_text in zip(minute_columns, row[4:]):
                count = int(count_text)
                if count:
                    start = 60.0 * (int(column) - first_minute)
                    arrivals.extend(start + 60.0 * rng.random() for _ in range(count))
            arrivals.sort()
            trace.functions.append(
                FunctionTrace(name=key, arrivals=arrivals, service_s=[service] * len(arrivals), trigger=row[3])
            )
    return trace


def _load_azure2021(path: Path, seed: int) -> Trace:
    per_function: dict[str, list[tuple[float, float]]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            duration = float(row["duration"])
            arrival = float(row["end_timestamp"]) - duration
            per_function.setdefault(f"{row['app']}:{row['func']}", []).append((arrival, duration))
    trace = Trace(format="azure2021", path=str(path))
    start = min((a for rows in per_function.values() for a, _ in rows), default=0.0)
    end = max((a + d for rows in per_function.values() for a, d in rows), default=0.0)
    for name, rows in per_function.items():
        rows.sort()
        trace.functions.append(
            FunctionTrace(name=name, arrivals=[a - start for a, _ in rows], service_s=[d for _, d in rows])
        )
    trace.duration_s = end - start
    return trace


def _parse_timestamp(text: str) -> float:
    # 7 fractional digits: trim to microseconds for datetime
    whole, _, fraction = text.strip().partition(".")
    stamp = dt.datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    return stamp.timestamp() + (float("0." + fraction) if fraction else 0.0)


def _load_llm2023(path: Path, seed: int) -> Trace:
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            service = LLM_S_PER_GENERATED_TOKEN * int(row["GeneratedTokens"]) + LLM_S_PER_CONTEXT_TOKEN * int(
                row["ContextTokens"]
            )
            rows.append((_parse_timestamp(row["TIMESTAMP"]), service))
    rows.sort()
    start = rows[0][0] if rows else 0.0
    trace = Trace(format="azurellm2023", path=str(path))
    trace.functions.append(
        FunctionTrace(name="llm", arrivals=[t - start for t, _ in rows], service_s=[s for _, s in rows])
    )
    trace.duration_s = (rows[-1][0] - start + rows[-1][1]) if rows else 0.0
    return trace
