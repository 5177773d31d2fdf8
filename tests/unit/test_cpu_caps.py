"""The CPU capability check: what a vLLM engine on a CPU host is given for usable, advertised-but-
trapping and absent AMX; the probe's child processes (a trap kills only the child); the per-host
cache; the RAYGPU_CPU_CAPS override; what an engine death says."""

import json
import signal

import pytest

from deployments.engines import cpu_caps
from deployments.engines.cpu_caps import (
    CpuCaps,
    KernelProbe,
    combine,
    cpu_engine_dtype,
    explain_engine_death,
    host_caps,
    parse_override,
    run_probe,
    signal_name,
)

BOTH = {"amx": True, "avx512": True}


def caps(advertised, probes, forced=None):
    return combine(advertised, probes, forced or {}, "probe")


USABLE = caps(BOTH, [KernelProbe("amx", "amx/bfloat16", True), KernelProbe("avx512", "vec/float32", True)])
TRAPPING = caps(
    BOTH,
    [KernelProbe("amx", "amx/bfloat16", False, signal="SIGILL", detail="SIGILL"), KernelProbe("avx512", "vec", True)],
)
ABSENT = caps({"amx": False, "avx512": True}, [KernelProbe("avx512", "vec/float32", True)])


def test_usable_amx_leaves_vllm_its_own_dtype():
    assert USABLE.usable == {"amx": True, "avx512": True}
    assert cpu_engine_dtype(None, USABLE) == (None, "")
    assert cpu_engine_dtype("auto", USABLE) == (None, "")


def test_advertised_amx_that_traps_runs_the_engine_in_float32_and_says_why():
    assert TRAPPING.usable["amx"] is False
    dtype, why = cpu_engine_dtype(None, TRAPPING)
    assert dtype == "float32"
    assert "advertises AMX" in why and "SIGILL" in why and "dtype" in why


def test_absent_amx_needs_no_fallback():
    assert ABSENT.usable["amx"] is False
    assert cpu_engine_dtype(None, ABSENT) == (None, "")


def test_amx_that_could_not_be_tried_counts_as_unusable():
    unknown = caps(BOTH, [KernelProbe("amx", "amx/bfloat16", None, detail="did not finish within 1 s")])
    assert unknown.usable["amx"] is None
    assert cpu_engine_dtype(None, unknown)[0] == "float32"
    assert "could not be tried" in cpu_engine_dtype(None, unknown)[1]


def test_an_explicit_dtype_wins_with_a_warning_where_it_would_trap():
    assert cpu_engine_dtype("float16", TRAPPING) == ("float16", "")
    dtype, why = cpu_engine_dtype("bfloat16", TRAPPING)
    assert dtype == "bfloat16" and "SIGILL" in why
    assert cpu_engine_dtype("bfloat16", USABLE) == ("bfloat16", "")


def test_the_override_forces_either_side():
    forced_off = combine(BOTH, USABLE.probes, parse_override("amx=0"), "probe")
    assert forced_off.usable["amx"] is False and forced_off.source == "override"
    dtype, why = cpu_engine_dtype(None, forced_off)
    assert dtype == "float32" and "RAYGPU_CPU_CAPS" in why
    forced_on = combine(BOTH, TRAPPING.probes, parse_override(" AMX = yes , avx512=1"), "probe")
    assert forced_on.usable == {"amx": True, "avx512": True}
    assert cpu_engine_dtype(None, forced_on) == (None, "")


@pytest.mark.parametrize(
    "text, message",
    [("amx", "give amx=1 or amx=0"), ("amx=2", "give amx=1"), ("sse=1", "unknown capability 'sse'")],
)
def test_a_bad_override_is_refused_naming_the_variable(text, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_override(text)
    assert "RAYGPU_CPU_CAPS" in str(info.value)


def test_signal_names_from_exit_codes():
    assert signal_name(-4) == "SIGILL" and signal_name(132) == "SIGILL" and signal_name(-9) == "SIGKILL"
    assert signal_name(1) is None and signal_name(None) is None and signal_name(0) is None


def test_an_engine_death_names_the_signal_the_likely_capability_and_the_fix():
    message = explain_engine_death(-signal.SIGILL, TRAPPING, on_cpu=True)
    assert "SIGILL" in message and "AMX" in message and "float32" in message and "raygpu doctor" in message
    assert "out-of-memory" in explain_engine_death(-signal.SIGKILL, None, on_cpu=True)
    assert "SIGSEGV" in explain_engine_death(-signal.SIGSEGV, None, on_cpu=False)
    assert "exited with code 3" in explain_engine_death(3, None, on_cpu=True)


def test_a_trap_in_the_probe_kills_only_its_child(monkeypatch):
    monkeypatch.setattr(cpu_caps, "PROBE_SOURCE", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    probe = run_probe("amx")
    assert probe.ok is False and probe.signal == "SIGILL" and probe.kernel == "amx/bfloat16"
    monkeypatch.setattr(cpu_caps, "PROBE_SOURCE", "import sys; sys.exit(0)")
    assert run_probe("avx512").ok is True
    monkeypatch.setattr(cpu_caps, "PROBE_SOURCE", "raise SystemExit('no kernel')")
    failed = run_probe("amx")
    assert failed.ok is False and failed.signal is None and "no kernel" in failed.detail
    monkeypatch.setattr(cpu_caps, "PROBE_SOURCE", "import time; time.sleep(30)")
    assert run_probe("amx", timeout_s=0.5).ok is None


def test_the_probe_runs_once_per_host_and_build_and_the_override_applies_over_the_cache(tmp_path, monkeypatch):
    calls = []

    def probe_host():
        calls.append(1)
        return TRAPPING

    monkeypatch.setenv("RAYGPU_CPU_CAPS_DIR", str(tmp_path / "caps"))
    monkeypatch.delenv("RAYGPU_CPU_CAPS", raising=False)
    monkeypatch.setattr(cpu_caps, "probe_host", probe_host)
    first = host_caps()
    second = host_caps()
    assert len(calls) == 1 and first.source == "probe" and second.source == "cache"
    assert second.usable == first.usable and second.probes[0].signal == "SIGILL"
    (cached,) = (tmp_path / "caps").glob("*.json")
    assert json.loads(cached.read_text())["usable"]["amx"] is False
    assert (tmp_path / "caps").stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("RAYGPU_CPU_CAPS", "amx=1")
    assert host_caps().usable["amx"] is True and len(calls) == 1


def test_a_probe_that_could_not_finish_is_not_remembered(tmp_path, monkeypatch):
    calls = []
    unknown = caps(BOTH, [KernelProbe("amx", "amx/bfloat16", None, detail="timeout")])
    monkeypatch.setenv("RAYGPU_CPU_CAPS_DIR", str(tmp_path))
    monkeypatch.delenv("RAYGPU_CPU_CAPS", raising=False)
    monkeypatch.setattr(cpu_caps, "probe_host", lambda: calls.append(1) or unknown)
    host_caps()
    host_caps()
    assert len(calls) == 2 and not list(tmp_path.glob("*.json"))


def test_caps_survive_json():
    again = CpuCaps.from_json(json.loads(json.dumps(TRAPPING.to_json())))
    assert again == TRAPPING
