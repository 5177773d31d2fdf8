"""A user app as one Serve application: a deployment per unit, each with its resources, queue
bounds and raygpu's autoscaling policy, run by the replica class of the unit's kind."""

from __future__ import annotations

from typing import Any

from ray import serve

from autoscaling.serve_adapter import serve_autoscaling_config
from billing.constants import METER_ACTOR_NAME, METER_NAMESPACE
from deployments import constants
from deployments.kinds import kind_of
from deployments.node.app_workers import unit_key, wants_app_worker
from deployments.node.warm_envs import runtime_env_for
from deployments.spec import FunctionSpec


def deployment_options(
    app: str,
    spec: FunctionSpec,
    accelerator: str | None,
    store_actor: str,
    store_namespace: str,
    initial_replicas: int | None = None,
    worker_resource: str | None = None,
    metered: bool = True,
    digest: str | None = None,
    app_worker: bool = False,
) -> dict[str, Any]:
    """Serve options of one unit's deployment: resources, autoscaling, queue bounds (the policy
    plans with the replica starts the meter measures, where there is a meter).
    `worker_resource`: a custom resource only non-head nodes have; asking for a sliver of it keeps
    user replicas off the head node (the control plane's) when the cluster has other nodes.
    `app_worker`: its replicas take the warm workers holding its app unit (a node holds one), in
    that unit's runtime env; else the generic warm workers of its flavour."""
    actor_options: dict[str, Any] = {"num_cpus": spec.cpu}
    request = spec.gpu_request
    if request is not None:
        actor_options["num_gpus"] = request.count
        if accelerator:
            actor_options["accelerator_type"] = accelerator
    if spec.memory:
        actor_options["memory"] = spec.memory * 1024 * 1024
    if worker_resource:
        actor_options["resources"] = {worker_resource: constants.WORKER_RESOURCE_SLIVER}
    unit = unit_key(app, spec.name, digest) if app_worker and digest and wants_app_worker(spec) else None
    runtime_env = runtime_env_for(spec.image.to_runtime_env(), kind_of(spec).warm_flavour, unit)
    if runtime_env:
        actor_options["runtime_env"] = runtime_env
    return {
        "name": spec.name,
        "ray_actor_options": actor_options,
        "max_ongoing_requests": spec.max_inputs,
        # The gateway admits up to the function's queue bound; at zero replicas all of those calls
        # wait in Serve's router, which must not refuse them first (and holds at least one).
        "max_queued_requests": spec.queue_bound + (0 if spec.max_queue else 1),
        "graceful_shutdown_timeout_s": min(spec.timeout, constants.MAX_GRACEFUL_SHUTDOWN_S),
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": constants.REPLICA_HEALTH_CHECK_PERIOD_S,
        "autoscaling_config": serve_autoscaling_config(
            app=app,
            function=spec.name,
            min_replicas=spec.min_containers,
            max_replicas=spec.max_containers,
            buffer_replicas=spec.buffer_containers,
            inputs_per_replica=spec.max_inputs,
            idle_window_s=spec.scaledown_window,
            start_time_s=constants.EXPECTED_START_TIME_S,
            store_actor=store_actor,
            store_namespace=store_namespace,
            meter_actor=METER_ACTOR_NAME if metered else None,
            meter_namespace=METER_NAMESPACE if metered else None,
            metrics_interval_s=constants.METRICS_INTERVAL_S,
            look_back_period_s=constants.LOOK_BACK_PERIOD_S,
            initial_replicas=initial_replicas,
        ),
    }


def build_app_application(
    app: str,
    version: int,
    units: list[tuple[FunctionSpec, bytes, str | None]],
    store_actor: str,
    store_namespace: str,
    metered: bool = True,
    initial_replicas: dict[str, int] | None = None,
    worker_resource: str | None = None,
    versions: dict[str, str] | None = None,
    app_workers: set[str] | None = None,
) -> Any:
    """One Serve application holding a deployment per unit of a user app.

    Serve needs a single ingress: the first deployment takes the others as (unused) constructor
    arguments, which is how Serve learns to deploy them all in the same application.
    `versions` (function -> digest of its spec and code) name each deployment's version, so that
    deploying the application again with some functions added or removed (parking) leaves the
    replicas of the others running; without it Serve draws a new version per deploy.
    `app_workers`: the functions whose replicas take the warm workers holding their app unit.
    """
    bound = []
    for spec, payload, accelerator in units:
        options = deployment_options(
            app,
            spec,
            accelerator,
            store_actor,
            store_namespace,
            initial_replicas=(initial_replicas or {}).get(spec.name),
            worker_resource=worker_resource,
            metered=metered,
            digest=(versions or {}).get(spec.name),
            app_worker=spec.name in (app_workers or set()),
        )
        deployment = serve.deployment(kind_of(spec).replica_class()).options(**options)
        if versions and spec.name in versions:
            deployment = deployment.options(version=versions[spec.name], _internal=True)
        bound.append((deployment, (app, version, spec.model_dump_json(), payload, accelerator, metered)))
    ingress_deployment, ingress_args = bound[0]
    siblings = [deployment.bind(*args) for deployment, args in bound[1:]]
    return ingress_deployment.bind(*ingress_args, *siblings)
