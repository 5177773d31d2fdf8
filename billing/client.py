"""The replica side of metering: buffer lifecycle events and request records, ship them in
batches, resend until the meter has them (ids make resends harmless), heartbeat while alive."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

import ray

from billing.constants import METER_ACTOR_NAME, METER_NAMESPACE

logger = logging.getLogger(f"ray.serve.{__name__}")
HEARTBEAT_S = 2.0
FLUSH_S = 1.0
MAX_BUFFERED = 200_000  # beyond this the oldest request records are dropped (events never are)


def process_start_time() -> float:
    """Wall-clock time this process started, to ~10 ms. psutil's create_time adds the kernel's
    boot time, which /proc/stat gives in whole seconds (up to 1 s off); the process age from
    /proc/self/stat and /proc/uptime is exact to a clock tick."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started_ticks = int(fields[19])  # field 22 of stat(5): starttime, in clock ticks since boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().create_time()


class MeterClient:
    """Metering of one replica. `enabled=False` (operators measuring metering overhead) records nothing."""

    def __init__(self, app: str, function: str, gpus: float, accelerator: str | None, enabled: bool = True):
        self.enabled = enabled
        self.app, self.function = app, function
        self.gpus, self.accelerator = gpus, accelerator
        self.replica = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.phases: list[dict[str, Any]] = []
        # the node this replica runs on, sent once with the first batch (`raygpu bill --nodes`)
        self.placements: list[dict[str, Any]] = []
        if enabled:
            try:
                self.placements.append({"replica": self.replica, "node_id": ray.get_runtime_context().get_node_id()})
            except Exception:
                pass  # not in a Ray worker: no node to report
        self._seq = 0
        self._meter: Any = None
        self._task: asyncio.Task | None = None
        self.ongoing = 0

    def _id(self) -> str:
        self._seq += 1
        return f"{self.replica}:{self._seq}"

    def event(self, kind: str, ts: float | None = None) -> None:
        if not self.enabled:
            return
        self.events.append(
            {
                "id": self._id(),
                "app": self.app,
                "function": self.function,
                "replica": self.replica,
                "kind": kind,
                "ts": time.time() if ts is None else ts,
                "gpus": self.gpus,
                "accelerator": self.accelerator,
            }
        )

    def start_phases(self, phases: dict[str, float]) -> None:
        """This replica's start, by phase (recorded once per replica and phase)."""
        if self.enabled:
            self.phases.append(
                {
                    "app": self.app,
                    "function": self.function,
                    "replica": self.replica,
                    "phases": dict(phases),
                    "ts": time.time(),
                }
            )

    def call_started(self) -> None:
        if not self.enabled:
            return
        self.ongoing += 1
        if self.ongoing == 1:
            self.event("serving")

    def call_finished(
        self,
        status: int,
        latency_s: float,
        bytes_in: int,
        bytes_out: int,
        call_id: str | None = None,
        attempt: int | None = None,
    ) -> None:
        if not self.enabled:
            return
        self.ongoing -= 1
        now = time.time()
        record: dict[str, Any] = {
            "id": self._id(),
            "app": self.app,
            "function": self.function,
            "replica": self.replica,
            "status": status,
            "latency_s": latency_s,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "ts": now,
        }
        if call_id is not None:
            record["call_id"] = call_id
            record["attempt"] = attempt or 1
        self.requests.append(record)
        if len(self.requests) > MAX_BUFFERED:
            del self.requests[: len(self.requests) - MAX_BUFFERED]
        if self.ongoing == 0:
            self.event("idle", now)

    def start(self) -> None:
        if self._task is None and self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        last_beat = float("-inf")
        while True:
            await asyncio.sleep(FLUSH_S)
            # the half-tick slack keeps the period at HEARTBEAT_S despite timer jitter
            if time.monotonic() - last_beat >= HEARTBEAT_S - FLUSH_S / 2:
                last_beat = time.monotonic()
                self.event("heartbeat")
            await self.flush()

    async def flush(self) -> None:
        if not self.events and not self.requests and not self.phases:
            return
        batch = {
            "events": self.events,
            "requests": self.requests,
            "start_phases": self.phases,
            "placements": self.placements,
        }
        self.events, self.requests, self.phases, self.placements = [], [], [], []
        try:
            if self._meter is None:
                self._meter = ray.get_actor(METER_ACTOR_NAME, namespace=METER_NAMESPACE)
            await self._meter.record.remote(batch)
        except Exception as exc:  # the meter is restarting or unreachable: keep everything
            self._meter = None
            self.events = batch["events"] + self.events
            self.requests = batch["requests"] + self.requests
            self.phases = batch["start_phases"] + self.phases
            self.placements = batch["placements"] + self.placements
            logger.warning("raygpu: meter unreachable (%s); %d events buffered", exc, len(self.events))

    async def aclose(self) -> None:
        """Stop and wait until the meter has the stop event and everything buffered (best effort)."""
        if not self.enabled:
            return
        self.event("stopped")
        if self._task is not None:
            self._task.cancel()
        await self.flush()
        self.enabled = False

    def stop(self) -> None:
        """Best effort at shutdown: a stop event and whatever is buffered, without waiting."""
        if not self.enabled:
            return
        self.event("stopped")
        if self._task is not None:
            self._task.cancel()
        try:
            meter = self._meter or ray.get_actor(METER_ACTOR_NAME, namespace=METER_NAMESPACE)
            meter.record.remote(
                {
                    "events": self.events,
                    "requests": self.requests,
                    "start_phases": self.phases,
                    "placements": self.placements,
                }
            )
        except Exception:
            pass  # closed at the last heartbeat instead
