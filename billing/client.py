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

from billing.meter import METER_ACTOR_NAME

logger = logging.getLogger("ray.serve")
HEARTBEAT_S = 2.0
FLUSH_S = 1.0
MAX_BUFFERED = 200_000  # beyond this the oldest request records are dropped (events never are)


class MeterClient:
    def __init__(self, app: str, function: str, gpus: float, accelerator: str | None):
        self.app, self.function = app, function
        self.gpus, self.accelerator = gpus, accelerator
        self.replica = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._seq = 0
        self._meter: Any = None
        self._task: asyncio.Task | None = None
        self.ongoing = 0

    def _id(self) -> str:
        self._seq += 1
        return f"{self.replica}:{self._seq}"

    def event(self, kind: str, ts: float | None = None) -> None:
        self.events.append({"id": self._id(), "app": self.app, "function": self.function, "replica": self.replica,
                            "kind": kind, "ts": time.time() if ts is None else ts, "gpus": self.gpus,
                            "accelerator": self.accelerator})

    def call_started(self) -> None:
        self.ongoing += 1
        if self.ongoing == 1:
            self.event("serving")

    def call_finished(self, status: int, latency_s: float, bytes_in: int, bytes_out: int) -> None:
        self.ongoing -= 1
        now = time.time()
        self.requests.append({"id": self._id(), "app": self.app, "function": self.function, "replica": self.replica,
                              "status": status, "latency_s": latency_s, "bytes_in": bytes_in,
                              "bytes_out": bytes_out, "ts": now})
        if len(self.requests) > MAX_BUFFERED:
            del self.requests[: len(self.requests) - MAX_BUFFERED]
        if self.ongoing == 0:
            self.event("idle", now)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        last_beat = 0.0
        while True:
            await asyncio.sleep(FLUSH_S)
            if time.monotonic() - last_beat >= HEARTBEAT_S:
                last_beat = time.monotonic()
                self.event("heartbeat")
            await self.flush()

    async def flush(self) -> None:
        if not self.events and not self.requests:
            return
        batch = {"events": self.events, "requests": self.requests}
        self.events, self.requests = [], []
        try:
            if self._meter is None:
                self._meter = ray.get_actor(METER_ACTOR_NAME, namespace="raygpu")
            await self._meter.record.remote(batch)
        except Exception as exc:  # the meter is restarting or unreachable: keep everything
            self._meter = None
            self.events = batch["events"] + self.events
            self.requests = batch["requests"] + self.requests
            logger.warning("raygpu: meter unreachable (%s); %d events buffered", exc, len(self.events))

    def stop(self) -> None:
        """Best effort at shutdown: a stop event and whatever is buffered, without waiting."""
        self.event("stopped")
        if self._task is not None:
            self._task.cancel()
        try:
            meter = self._meter or ray.get_actor(METER_ACTOR_NAME, namespace="raygpu")
            meter.record.remote({"events": self.events, "requests": self.requests})
        except Exception:
            pass  # closed at the last heartbeat instead
