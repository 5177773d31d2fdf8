"""What every raygpu replica does around its own work: time its start by phase, meter its
lifecycle and calls, find what triggered it, and report its load to the autoscaler."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from billing.client import MeterClient
from deployments.spec import FunctionSpec
from deployments.start_phases import StartPhases
from deployments.warm_pool import replica_start_time

logger = logging.getLogger("ray.serve")


class ReplicaBase:
    """Base of the function, torch-model and vLLM replicas."""

    def _begin_start(self, app: str, version: int, spec_json: str, accelerator: str | None, metered: bool) -> None:
        """Call first in the constructor: start timing and metering this replica."""
        init_at = time.time()
        self.phases = StartPhases(process_start=replica_start_time(init_at), replica_init=init_at)
        self.app, self.version = app, version
        self.spec = FunctionSpec.model_validate_json(spec_json)
        request = self.spec.gpu_request
        self.meter = MeterClient(app, self.spec.name, float(request.count) if request else 0.0, accelerator,
                                 enabled=metered)
        self.meter.event("started", self.phases.process_start)
        self.meter.start()
        self.phases.report = self.meter.start_phases
        self._ongoing = 0
        self._trigger = asyncio.get_running_loop().create_task(self._find_trigger())

    async def _find_trigger(self) -> None:
        """What started this replica (a call at zero, a pre-warm): reported with its first response."""
        from deployments.store import start_trigger

        try:
            self.phases.set_trigger(*await start_trigger(self.app, self.spec.name, self.phases.process_start))
            if "first_response" in self.phases.marks:  # answered before the lookup: report the rest now
                self.meter.start_phases(self.phases.durations())
        except Exception as exc:
            logger.debug("raygpu: no scale event for this start (%s)", exc)

    async def replica_info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": self.version, "ongoing": self._ongoing}

    def record_autoscaling_stats(self) -> dict[str, float]:
        return {"raygpu_ongoing": float(self._ongoing)}

    def _stop_metering(self) -> None:
        """Call from `__del__`: the stop event and whatever is still buffered."""
        meter = getattr(self, "meter", None)
        if meter is not None:
            meter.stop()
