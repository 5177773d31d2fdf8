"""Trace loaders key every function by its whole name; tables abbreviate, lookups take a unique prefix."""

import pytest

from autoscaling.traces import load_trace


def write_2021(path, rows):
    path.write_text("app,func,end_timestamp,duration\n" + "".join(f"{a},{f},{e},{d}\n" for a, f, e, d in rows))
    return path


def test_azure2021_functions_whose_names_share_a_prefix_stay_apart(tmp_path):
    trace = load_trace(
        write_2021(
            tmp_path / "t.csv",
            [
                ("inference-app", "model-M0001", 10.0, 1.0),
                ("inference-app", "model-M0002", 11.0, 1.0),
                ("inference-app", "model-M0001", 20.0, 2.0),
            ],
        ),
        "azure2021",
    )
    by_name = {f.name: f for f in trace.functions}
    assert set(by_name) == {"inference-app:model-M0001", "inference-app:model-M0002"}
    assert by_name["inference-app:model-M0001"].arrivals == [0.0, 9.0]
    assert by_name["inference-app:model-M0002"].arrivals == [1.0]
    # tables show both parts cut short, which may coincide; the keys never do
    assert {f.display_name for f in trace.functions} == {"inferenc:model-M0"}


def test_a_function_is_found_by_its_key_or_a_unique_prefix(tmp_path):
    trace = load_trace(
        write_2021(tmp_path / "t.csv", [("a1", "fnA", 1.0, 0.5), ("a1", "fnB", 2.0, 0.5), ("b2", "fnA", 3.0, 0.5)]),
        "azure2021",
    )
    assert trace.find("a1:fnB").name == "a1:fnB"
    assert trace.find("b2").name == "b2:fnA"
    with pytest.raises(KeyError, match="names 2 functions"):
        trace.find("a1")
    with pytest.raises(KeyError, match="no function"):
        trace.find("zz")
