"""The gateway's own answers: an engine whose process died, and raygpu's own failure (500 with an
error id)."""

from __future__ import annotations

import logging
import secrets

from starlette.responses import Response

from deployments.gateway.http import error_response

logger = logging.getLogger("ray.serve.deployments.gateway")


def engine_process_died(name: str, exc: BaseException) -> str:
    """What a caller learns when the replica process running an engine died under its call: Ray's
    account of the exit, and the usual cause of an engine that dies in its first forward pass."""
    detail = str(getattr(exc, "error_msg", "") or exc)
    exit_detail = detail.partition("Worker exit detail:")[2].split(".")[0].strip()
    return (
        f"the replica running the engine of {name!r} died during the call"
        + (f" ({exit_detail})" if exit_detail else f" ({type(exc).__name__})")
        + "; a process killed by a signal in its engine's first forward pass on a CPU host is most often an "
        "instruction the CPU advertises but cannot run: `raygpu doctor` shows what the host runs, and "
        "RAYGPU_CPU_CAPS=amx=0 or engine_args dtype='float32' avoids it; `raygpu logs` has the replica's output"
    )


def internal_error(what: str) -> Response:
    """raygpu's own failure: 500 with a short id the gateway log holds next to the traceback; the
    exception text stays in the log."""
    error_id = secrets.token_hex(4)
    logger.exception("raygpu gateway: %s failed [error id %s]", what, error_id)
    return error_response(
        500,
        "InternalError",
        f"raygpu failed on this request; the gateway log has the details under error id {error_id}",
        error_id=error_id,
    )
