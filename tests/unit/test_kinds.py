"""The registry of unit kinds: every kind's rules, routes and replica class; unknown kinds refused."""

import pytest

from deployments.kinds import KINDS, checked, kind_of
from deployments.replicas.base import ReplicaBase
from deployments.spec import FunctionSpec, TorchModelSpec, VllmModelSpec


def test_the_registry_holds_the_four_kinds_and_each_names_its_replica_class():
    assert set(KINDS) == {"function", "class", "torch", "vllm"}
    classes = {name: kind.replica_class() for name, kind in KINDS.items()}
    assert all(issubclass(cls, ReplicaBase) for cls in classes.values())
    assert len(set(classes.values())) == 4


@pytest.mark.parametrize(
    "spec, problem",
    [
        (FunctionSpec(name="c", kind="class"), "at least one method"),
        (FunctionSpec(name="f", methods=["run"]), "no methods"),
        (FunctionSpec(name="t", kind="torch"), "needs torch_model"),
        (
            FunctionSpec(
                name="v",
                kind="vllm",
                torch_model=TorchModelSpec(weights={"a": "/w"}),
                vllm_model=VllmModelSpec(model="/m"),
            ),
            "torch_model settings belong to another kind",
        ),
        (FunctionSpec(name="x", kind="generator"), "unknown kind"),
    ],
)
def test_each_kind_refuses_specs_that_break_its_rules(spec, problem):
    with pytest.raises(ValueError, match=problem):
        checked(spec)


def test_route_patterns_for_status():
    assert kind_of(FunctionSpec(name="f")).route_pattern("a", FunctionSpec(name="f")) == "/a/f"
    cls = FunctionSpec(name="C", kind="class", methods=["m"])
    assert kind_of(cls).route_pattern("a", cls) == "/a/C/{method}"
    llm = FunctionSpec(name="chat", kind="vllm", vllm_model=VllmModelSpec(model="/m", task="embed"))
    assert kind_of(llm).route_pattern("a", llm) == "/a/chat/v1/..."
    assert [r.path for r in kind_of(llm).routes("a", llm, None)] == ["/a/chat/v1/embeddings", "/a/chat/v1/models"]
