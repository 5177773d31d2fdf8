"""Warm engine-core processes (real child processes, importing only the standard library here): one
no engine takes over is closed, whether vLLM cannot hand over at all or its launch failed after it
took one, and the list of handed processes stays bounded."""

import time

import deployments.engines.vllm_warm_core as warm_core
from deployments.engines.vllm_warm_core import MAX_HANDED, WarmCore, WarmCores


def ready_core() -> WarmCore:
    core = WarmCore(modules=("json",))
    deadline = time.monotonic() + 30
    while not core.ready():
        assert time.monotonic() < deadline, "the warm process never said it was ready"
        time.sleep(0.02)
    return core


def test_warm_processes_are_closed_when_this_vllm_cannot_take_them(monkeypatch):
    cores = WarmCores()
    waiting = [ready_core(), ready_core()]
    cores._cores = list(waiting)
    monkeypatch.setattr(warm_core, "capability", lambda: (False, "an engine launcher this raygpu does not know"))
    assert not cores.install()
    assert all(not core.process.is_alive() for core in waiting)
    assert cores.closed_unadopted == 2 and cores.ready_count() == 0


def test_a_taken_process_whose_engine_never_started_is_closed_and_the_handed_list_stays_bounded():
    cores = WarmCores()
    cores._cores = [ready_core()]
    handed = cores.process(lambda **_: None, "EngineCore", {})
    assert handed is not None and not handed._warm.started
    orphan = handed._warm
    cores.reap(now=time.time() + warm_core.HANDOFF_GRACE_S + 1)  # vLLM's launch failed after it took one
    assert not orphan.process.is_alive() and cores.closed_unadopted == 1
    for _ in range(MAX_HANDED + 3):
        ended = ready_core()
        ended.started = True
        ended.close()  # an engine that ran and ended
        cores.handed.append(ended)
    cores.reap()
    assert len(cores.handed) <= MAX_HANDED and cores.handed[-1] is ended  # the newest stays for its phases
