"""What one host can run, for `raygpu doctor`: its GPUs, the CPU capabilities a process can really
use (probed, see deployments.engines.cpu_caps), the torch and vLLM builds, free memory and shared
memory. Pure Python over the host; no Ray.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil

from deployments.engines.cpu_caps import CAPS_ENV, cpu_engine_dtype, host_caps, software_versions


def gpus() -> list[dict[str, Any]]:
    """The NVIDIA GPUs nvidia-smi lists (all of the host's, whatever this process was assigned)."""
    if shutil.which("nvidia-smi") is None:
        return []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        out = []
        for line in done.stdout.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3:
                out.append({"index": int(parts[0]), "name": parts[1], "memory_mib": int(float(parts[2]))})
        return out
    return []


def torch_build() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"version": None}
    return {"version": torch.__version__, "cuda": torch.version.cuda, "cpu_capability": _cpu_capability(torch)}


def _cpu_capability(torch: Any) -> str | None:
    with contextlib.suppress(Exception):
        return str(torch.backends.cpu.get_cpu_capability())
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return ""


def host_report(probe: bool = True) -> dict[str, Any]:
    """This host's report; `probe` runs the CPU kernel probe when no cached answer exists."""
    report: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu": {"model": cpu_model(), "cores": os.cpu_count()},
        "gpus": gpus(),
        "torch": torch_build(),
        "software": software_versions(),
        "memory": {
            "available_bytes": psutil.virtual_memory().available,
            "total_bytes": psutil.virtual_memory().total,
        },
        "shm": _disk("/dev/shm"),
    }
    if probe:
        try:
            caps = host_caps()
        except ValueError as exc:  # a bad RAYGPU_CPU_CAPS
            report["cpu"]["error"] = str(exc)
        else:
            dtype, why = cpu_engine_dtype(None, caps)
            report["cpu"].update(
                advertised=caps.advertised,
                usable=caps.usable,
                source=caps.source,
                probes=[p.__dict__ for p in caps.probes],
                override=os.environ.get(CAPS_ENV) or None,
                vllm_cpu_dtype=dtype or "auto",
                vllm_cpu_dtype_reason=why,
            )
    return report


def _disk(path: str) -> dict[str, int] | None:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return {"free_bytes": usage.free, "total_bytes": usage.total}
