"""Trace loaders against the real files, and the simulator against closed-form counts."""

import csv
import os
from pathlib import Path

import pytest

from autoscaling.baselines import FixedKeepAlive
from autoscaling.policy import ScalingConfig
from autoscaling.simulator import SimulationParams, policy_factories, simulate, simulate_function
from autoscaling.traces import FunctionTrace, Trace, load_trace

# The shared traces lie beside the project checkout (../shared/traces); RAYGPU_TRACES_DIR overrides.
TRACES = Path(os.environ.get("RAYGPU_TRACES_DIR", Path(__file__).resolve().parents[3] / "shared" / "traces"))
AZURE2019 = TRACES / "azure_functions_2019_sample500" / "invocations.csv"
AZURE2021 = TRACES / "azure_functions_2021" / "AzureFunctionsInvocationTraceForTwoWeeksJan2021.first998rows.csv"
LLM2023 = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"


def test_azure2019_loader_matches_the_csv():
    with AZURE2019.open() as f:
        rows = list(csv.reader(f))
    expected_total = sum(int(x) for row in rows[1:] for x in row[4:])
    trace = load_trace(AZURE2019, "azure2019")
    assert len(trace.functions) == 500 == len(rows) - 1
    assert trace.invocations == expected_total and expected_total > 3_000_000
    assert trace.duration_s == 480 * 60
    fn = max(trace.functions, key=lambda f: len(f.arrivals))
    assert fn.arrivals == sorted(fn.arrivals) and 0 <= fn.arrivals[0] and fn.arrivals[-1] < trace.duration_s
    assert all(s > 0 for s in fn.service_s[:10])
    again = load_trace(AZURE2019, "azure2019")  # seed 0: the same arrivals every time
    assert again.functions[0].arrivals == trace.functions[0].arrivals


def test_azure2021_and_llm_loaders():
    t21 = load_trace(AZURE2021, "azure2021")
    assert t21.invocations == 998
    assert all(a >= 0 for f in t21.functions for a in f.arrivals)
    llm = load_trace(LLM2023, "azurellm2023")
    assert len(llm.functions) == 1 and llm.invocations == 8819
    assert 50 * 60 < llm.duration_s < 60 * 60
    assert llm.functions[0].service_s[0] == pytest.approx(0.02 * 10 + 0.0002 * 4808)


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(AZURE2019, "csv")
    with pytest.raises(FileNotFoundError, match="no such trace file"):
        load_trace(tmp_path / "missing.csv", "azure2019")


def test_fixed_60s_cold_starts_equal_the_closed_form_count():
    arrivals = [0.0, 10.0, 30.0, 130.0, 135.0, 335.0, 340.5, 460.0, 519.0, 700.0]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    expected = 1 + sum(1 for g in gaps if g > 60)
    fn = FunctionTrace(name="f", arrivals=arrivals, service_s=[0.01] * len(arrivals))
    params = SimulationParams(start_time_s=3.0)
    result = simulate_function(fn, FixedKeepAlive(ScalingConfig(), 60.0), params, end_s=800.0)
    assert result.cold_starts == expected == 5
    assert result.busy_s == pytest.approx(0.1)
    # each cold start waited the start time; warm calls waited nothing
    assert sorted(result.latencies)[-expected:] == pytest.approx([3.0] * expected)
    # replica time, by hand: each replica lives from its start request until 60 s after the last
    # moment it had a call (a warm call's arrival, or a cold call's dispatch when it became ready)
    held = (30 + 60) + (135 + 60 - 130) + (340.5 + 60 - 335) + (519 + 60 - 460) + (703 + 60 - 700)
    assert result.held_s == pytest.approx(held)


def test_simulate_reports_every_policy_with_params():
    fn = FunctionTrace(name="timer", arrivals=[120.0 * k for k in range(40)], service_s=[0.5] * 40)
    trace = Trace(format="azure2019", path="hand-made", functions=[fn], duration_s=4800.0)
    result = simulate(trace, params=SimulationParams(start_time_s=30.0))
    assert set(result["policies"]) == set(policy_factories())
    assert result["params"]["start_time_s"] == 30.0 and result["params"]["usd_per_gpu_hour"] == 3.95
    for metrics in result["policies"].values():
        assert metrics["requests"] == 40
        assert metrics["busy_gpu_seconds"] == pytest.approx(20.0)
    # a timer every 2 minutes: raygpu learns the period and pre-warms, fixed 60 s never can
    raygpu, fixed = result["policies"]["raygpu"], result["policies"]["fixed_60s"]
    assert fixed["cold_starts"] == 40
    assert raygpu["cold_starts"] <= 8
    assert raygpu["idle_gpu_seconds"] < result["policies"]["fixed_600s"]["idle_gpu_seconds"]
    with pytest.raises(ValueError, match="unknown policies"):
        simulate(trace, policies=["nope"])


def test_simulate_cli_prints_the_table_and_writes_json_and_plots(tmp_path):
    import json

    from click.testing import CliRunner

    from raygpu.cli import main

    out_json, out_png = tmp_path / "sim.json", tmp_path / "sim.png"
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            "--trace",
            str(AZURE2021),
            "--format",
            "azure2021",
            "--start-time",
            "10",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "raygpu" in result.output and "hybrid_histogram" in result.output
    data = json.loads(out_json.read_text())
    assert data["params"]["start_time_s"] == 10 and data["params"]["invocations"] == 998
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(main, ["simulate", "--trace", str(tmp_path / "nope.csv"), "--format", "azure2021"])
    assert bad.exit_code == 1 and "no such trace file" in bad.output
