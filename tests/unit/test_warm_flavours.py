"""Warm-pool flavours and engine start phases, without a cluster: which warm worker a replica may
land on, how pool sizes are written, and the phases a vLLM replica reports."""

import os

import pytest

from autoscaling.start_times import planned_start_s
from deployments.engines.vllm_warm_core import ENGINE_PHASES
from deployments.node.warm_pool import (
    WARM_ENV_VAR,
    apply_image_env,
    flavour_runtime_env,
    parse_pool_sizes,
    runtime_env_for,
)
from deployments.replicas.application import deployment_options
from deployments.replicas.start_phases import PHASES, StartPhases
from deployments.spec import FunctionSpec, Image, VllmModelSpec


def test_pool_sizes_are_written_per_flavour_or_as_a_plain_count():
    assert parse_pool_sizes("torch=1,vllm=2") == {"torch": 1, "vllm": 2}
    assert parse_pool_sizes(" vllm=1 ") == {"vllm": 1}
    assert parse_pool_sizes("3") == {"torch": 3} and parse_pool_sizes(0) == {"torch": 0}
    assert parse_pool_sizes({"vllm": 1}) == {"vllm": 1}


@pytest.mark.parametrize("bad", ["sglang=1", "torch", "torch=-1", "torch=x", "torch=65", "=1", "vllm=1.5"])
def test_malformed_pool_sizes_are_refused_with_the_form_to_use(bad):
    with pytest.raises(ValueError, match="warm pool"):
        parse_pool_sizes(bad)


def test_a_replica_whose_image_only_sets_variables_still_lands_on_a_warm_worker():
    env_only = Image(env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}).to_runtime_env()
    assert runtime_env_for(env_only, "vllm") == flavour_runtime_env("vllm")
    assert runtime_env_for({}, "torch") == {"env_vars": {WARM_ENV_VAR: "torch"}}
    with_pip = Image(pip=["httpx"], env={"A": "1"}).to_runtime_env()
    assert runtime_env_for(with_pip, "vllm") == with_pip  # another environment: no warm worker has it
    with pytest.raises(ValueError, match="flavour"):
        flavour_runtime_env("jax")


def test_image_variables_are_set_in_the_replica_process(monkeypatch):
    monkeypatch.delenv("RAYGPU_TEST_IMAGE_VAR", raising=False)
    apply_image_env({"RAYGPU_TEST_IMAGE_VAR": "on"})
    assert os.environ["RAYGPU_TEST_IMAGE_VAR"] == "on"
    monkeypatch.delenv("RAYGPU_TEST_IMAGE_VAR")


def test_each_kind_asks_for_its_flavour_of_warm_worker():
    llm = FunctionSpec(
        name="chat", kind="vllm", gpu="H100", vllm_model=VllmModelSpec(model="/m"), image=Image(env={"X": "1"})
    )
    plain = FunctionSpec(name="f", gpu="H100")
    runtime = deployment_options("shop", llm, "H100", "store", "ns")["ray_actor_options"]["runtime_env"]
    assert runtime == flavour_runtime_env("vllm")
    runtime = deployment_options("shop", plain, "H100", "store", "ns")["ray_actor_options"]["runtime_env"]
    assert runtime == flavour_runtime_env("torch")


def test_engine_phases_sit_between_imports_and_ready_and_count_as_start_time():
    order = list(PHASES)
    assert order.index("imports") < order.index("engine_process") < order.index("weights")
    assert order.index("kv_cache") < order.index("warmup") < order.index("engine_init") < order.index("ready")
    assert order.index("ready") < order.index("first_token") < order.index("first_response")
    assert set(ENGINE_PHASES) <= set(PHASES)
    phases = StartPhases(process_start=100.0, replica_init=100.5)
    for phase, at in (("imports", 101.0), ("engine_process", 101.2), ("weights", 102.0), ("kv_cache", 102.5)):
        phases.mark(phase, at)
    for phase, at in (("warmup", 102.6), ("engine_init", 103.0), ("ready", 103.1), ("first_token", 103.4)):
        phases.mark(phase, at)
    durations = phases.durations()
    assert durations["engine_process"] == pytest.approx(0.2) and durations["weights"] == pytest.approx(0.8)
    assert durations["first_token"] == pytest.approx(0.3)
    assert planned_start_s(durations) == pytest.approx(103.1 - 100.0)  # first_token is not start time


def test_a_torch_replica_without_engine_phases_keeps_its_durations():
    phases = StartPhases(process_start=0.0, replica_init=1.0)
    phases.mark("imports", 2.0)
    phases.mark("weights", 4.0)
    phases.mark("engine_init", 4.5)
    assert phases.durations() == {"process": 1.0, "imports": 1.0, "weights": 2.0, "engine_init": 0.5}
