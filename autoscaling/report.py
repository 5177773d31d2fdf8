"""Tables and plots of simulation results (matplotlib only when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoscaling.traces import Trace

COLUMNS = (
    ("cold_start_rate", "cold-start rate", "{:.4%}"),
    ("p50_added_latency_s", "p50 added s", "{:.3f}"),
    ("p99_added_latency_s", "p99 added s", "{:.2f}"),
    ("busy_gpu_seconds", "busy GPU-s", "{:,.0f}"),
    ("idle_gpu_seconds", "idle GPU-s", "{:,.0f}"),
    ("cost_usd", "cost $", "{:,.2f}"),
    ("replay_s", "replay s", "{:.1f}"),
)


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    return [
        [name] + [fmt.format(metrics[key]) for key, _, fmt in COLUMNS] for name, metrics in result["policies"].items()
    ]


def default_timeline_function(trace: Trace) -> str:
    """A function with bursty, intermittent traffic: the median one among those with 100+ calls."""
    candidates = sorted((len(f.arrivals), f.name) for f in trace.functions if len(f.arrivals) >= 100)
    if not candidates:
        candidates = sorted((len(f.arrivals), f.name) for f in trace.functions)
    return candidates[len(candidates) // 2][1]


def plot(result: dict[str, Any], trace: Trace, function: str, path: str | Path) -> Path:
    """One PNG: traffic and replicas over time for `function` under each policy (top), and
    cold-start rate vs idle GPU-seconds with one point per policy (bottom)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'raygpu[plot]'") from None
    fn = next(f for f in trace.functions if f.name == function)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 9))
    minutes = int(trace.duration_s // 60) + 1
    per_minute = [0] * minutes
    for t in fn.arrivals:
        per_minute[min(minutes - 1, int(t // 60))] += 1
    top.bar([m / 60 for m in range(minutes)], per_minute, width=1 / 60, color="0.8", label="calls per minute")
    top.set_xlabel("hours into the trace")
    top.set_ylabel("calls per minute")
    replicas_axis = top.twinx()
    for name, timeline in result.get("timelines", {}).items():
        if not timeline:
            continue
        times = [t / 3600 for t, _ in timeline] + [trace.duration_s / 3600]
        counts = [n for _, n in timeline] + [timeline[-1][1]]
        replicas_axis.step(times, counts, where="post", label=name, linewidth=1)
    replicas_axis.set_ylabel("replicas")
    replicas_axis.legend(loc="upper right", fontsize=8)
    top.set_title(f"function {function}: traffic and replicas")
    for name, metrics in result["policies"].items():
        bottom.scatter(metrics["idle_gpu_seconds"], metrics["cold_start_rate"] * 100, s=60)
        bottom.annotate(
            name,
            (metrics["idle_gpu_seconds"], metrics["cold_start_rate"] * 100),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=9,
        )
    bottom.set_xlabel("idle GPU-seconds")
    bottom.set_ylabel("cold-start rate (%)")
    bottom.set_title("cold starts vs idle GPU time, one point per policy (lower left is better)")
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
