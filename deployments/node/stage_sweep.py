"""The node's sweep of staged models (deployments/engines/model_stage.py): the warm pool on each node
removes the copies in node memory that no replica holds and none has used for a while."""

from __future__ import annotations

import asyncio
import functools
import logging

from deployments.engines.model_stage import remove_idle

logger = logging.getLogger(__name__)

STAGE_SWEEP_INTERVAL_S = 60.0  # how often a node looks for staged models left idle


async def sweep_staged_models(interval_s: float = STAGE_SWEEP_INTERVAL_S) -> None:
    """Forever: remove this node's idle staged models, off the event loop."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        try:
            removed = await loop.run_in_executor(None, remove_idle)
        except OSError as exc:
            logger.warning("raygpu: sweeping staged models failed (%s)", exc)
            continue
        if removed:
            logger.info("raygpu: removed %d staged models no replica used for a while", len(removed))


async def remove_unheld_staged_models() -> None:
    """Remove every staged model no replica on this node holds (the node runs none any more)."""
    try:
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(remove_idle, idle_s=0.0))
    except OSError as exc:
        logger.warning("raygpu: removing staged models failed (%s)", exc)
