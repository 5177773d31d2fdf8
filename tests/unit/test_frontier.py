"""The yardsticks of the autoscaling benchmark (no Ray): the oracle's idle on hand-made arrivals,
the fixed keep-alive frontier and a policy's place against it, the even/odd split of the 2019
functions, and the synthetic families."""

import statistics

import pytest

from autoscaling.frontier import dominated_by, frontier_idle_at, frontier_points, oracle_function_idle_s, position
from autoscaling.synthetic import FAMILIES, STRUCTURED, synthetic_trace
from autoscaling.traces import FunctionTrace, half_of, load_trace


def test_the_oracle_idles_through_short_gaps_and_restarts_for_long_ones():
    fn = FunctionTrace("f", arrivals=[0.0, 5.0, 100.0, 101.0], service_s=[1.0, 1.0, 1.0, 10.0])
    # first start 30; gap 1->5 is 4 (idle); gap 6->100 is 94 (restart: 30); 101 overlaps the busy period
    assert oracle_function_idle_s(fn, start_time_s=30.0) == 30.0 + 4.0 + 30.0
    assert oracle_function_idle_s(FunctionTrace("g", [], []), 30.0) == 0.0


def test_the_frontier_is_interpolated_at_a_policys_own_cold_start_rate():
    fixed = {
        10.0: {"cold_start_rate": 0.30, "idle_gpu_seconds": 100.0},
        60.0: {"cold_start_rate": 0.10, "idle_gpu_seconds": 300.0},
        600.0: {"cold_start_rate": 0.02, "idle_gpu_seconds": 1000.0},
    }
    points = frontier_points(fixed)
    assert [p["keep_alive_s"] for p in points] == [600.0, 60.0, 10.0]
    assert frontier_idle_at(points, 0.20) == pytest.approx(200.0)
    assert frontier_idle_at(points, 0.50) == 100.0  # more cold starts than the shortest keep-alive
    assert frontier_idle_at(points, 0.01) is None  # fewer cold starts than any keep-alive reaches
    place = position({"cold_start_rate": 0.10, "idle_gpu_seconds": 240.0}, points, {"idle_gpu_seconds": 120.0})
    assert place["idle_over_frontier"] == pytest.approx(0.8) and place["below_frontier_by"] == pytest.approx(0.2)
    assert place["idle_over_oracle"] == pytest.approx(2.0)
    policies = {
        "raygpu": {"cold_start_rate": 0.1, "idle_gpu_seconds": 240.0},
        "knative": {"cold_start_rate": 0.05, "idle_gpu_seconds": 200.0},
        "fixed": {"cold_start_rate": 0.05, "idle_gpu_seconds": 900.0},
    }
    assert dominated_by(policies, "raygpu") == ["knative"]
    beyond = position({"cold_start_rate": 0.01, "idle_gpu_seconds": 500.0}, points, {"idle_gpu_seconds": 100.0})
    assert beyond["fewer_cold_starts_than_any_keep_alive"] and beyond["idle_over_frontier"] == pytest.approx(0.5)


def test_the_2019_functions_split_in_two_halves_by_the_sha1_of_their_hash(tmp_path):
    path = tmp_path / "invocations.csv"
    rows = [f"o{i},a{i},h{i:03d},http,{i % 3},0" for i in range(40)]
    path.write_text("HashOwner,HashApp,HashFunction,Trigger,1,2\n" + "\n".join(rows) + "\n")
    even = load_trace(path, "azure2019", half="even")
    odd = load_trace(path, "azure2019", half="odd")
    assert len(even.functions) + len(odd.functions) == 40 and even.functions and odd.functions
    assert {f.name for f in even.functions}.isdisjoint(f.name for f in odd.functions)
    assert half_of("abc") == half_of("abc") and {half_of(f"x{i}") for i in range(20)} == {"even", "odd"}
    with pytest.raises(ValueError, match="half must be"):
        load_trace(path, "azure2019", half="third")


def test_synthetic_families_are_reproducible_and_have_their_shape():
    assert set(STRUCTURED) <= set(FAMILIES)
    for family in FAMILIES:
        first, again = synthetic_trace(family, duration_s=6 * 3600), synthetic_trace(family, duration_s=6 * 3600)
        assert [f.arrivals for f in first.functions] == [f.arrivals for f in again.functions]
        for fn in first.functions:
            assert fn.arrivals == sorted(fn.arrivals) and all(0 <= a <= first.duration_s for a in fn.arrivals)
            assert len(fn.service_s) == len(fn.arrivals)
    periodic = synthetic_trace("periodic", duration_s=6 * 3600).functions[1]  # every 120 s
    gaps = [b - a for a, b in zip(periodic.arrivals, periodic.arrivals[1:])]
    assert min(gaps) == pytest.approx(120.0) and max(gaps) == pytest.approx(120.0)
    jittered = synthetic_trace("jittered_periodic", duration_s=6 * 3600).functions[0]
    gaps = [b - a for a, b in zip(jittered.arrivals, jittered.arrivals[1:])]
    assert statistics.median(gaps) == pytest.approx(120.0, rel=0.1) and statistics.pstdev(gaps) > 1.0
    with pytest.raises(ValueError, match="unknown family"):
        synthetic_trace("weekly")
