"""A deploy's start check: one replica of a unit, built outside Serve with the resources, image
and code of the version being deployed, run until its unit has loaded (enter hooks, weights,
engine), then stopped. What failed, if anything, decides whether the version may go live."""

from __future__ import annotations

from typing import Any

import ray

from deployments import constants
from deployments.kinds import kind_of
from deployments.replicas.application import deployment_options
from deployments.spec import FunctionSpec


class StartCheck:
    """An actor that constructs one replica of a unit (as Serve would) and reports its start."""

    def __init__(self, app: str, version: int, spec_json: str, payload: bytes, accelerator: str | None):
        self.args = (app, version, spec_json, payload, accelerator, True)
        self.spec = FunctionSpec.model_validate_json(spec_json)

    async def run(self) -> str | None:
        """The unit's startup error (None when it started), after the replica has been stopped."""
        replica_class = kind_of(self.spec).replica_class()
        replica = replica_class.__new__(replica_class)
        await replica_class.__init__(replica, *self.args)
        try:
            error = await replica.start_check()
        finally:
            await replica.close()
        return error


def start_checks(
    app: str,
    version: int,
    units: list[tuple[FunctionSpec, bytes, str | None]],
    worker_resource: str | None = None,
) -> list[tuple[str, Any]]:
    """Start one check actor per unit; (unit name, the ObjectRef of its outcome) each."""
    started = []
    for spec, payload, accelerator in units:
        options = deployment_options(
            app,
            spec,
            accelerator,
            constants.STORE_ACTOR_NAME,
            constants.RAY_NAMESPACE,
            worker_resource=worker_resource,
        )["ray_actor_options"]
        actor = (
            ray.remote(StartCheck)
            .options(**options, max_restarts=0)
            .remote(app, version, spec.model_dump_json(), payload, accelerator)
        )
        started.append((spec.name, actor, actor.run.remote()))
    return [(name, (actor, ref)) for name, actor, ref in started]
