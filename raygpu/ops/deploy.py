"""Deploying, listing, inspecting and stopping apps on a connected cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import ray

from deployments import constants
from deployments.kinds import kind_of
from deployments.node.app_workers import app_worker_refusal, runs_ahead
from deployments.node.weight_cache import fingerprint
from deployments.replicas.start_phases import PHASES, TRIGGER_PHASES
from deployments.schedules import next_due_after
from deployments.serve_apps import serve_details
from deployments.spec import DeployedFunction, FunctionSpec
from deployments.weights_location import is_location, parse_location
from raygpu.ops.capacity import NodeType, node_type_for
from raygpu.ops.contracts import (
    AppList,
    AppStatus,
    AppSummary,
    DeployResult,
    FunctionStatus,
    PreparedUnit,
    ReplicaCounts,
    ReplicaInfo,
    ScaleEvent,
    ScheduledRunInfo,
    ScheduleStatus,
)
from raygpu.ops.placement import cluster_node_types, replica_request, worker_resource
from raygpu.ops.rollout import retire_versions, roll_out
from raygpu.sdk.admin import admin_key
from raygpu.sdk.app import App
from raygpu.sdk.control import admin_call, gateway_url, meter, public_url, store, wait_for_gateway
from raygpu.sdk.errors import DeployError, NoClusterError, NotFoundError

# Serve replica states of a replica on its way to running.
STARTING_STATES = ("STARTING", "PENDING_MIGRATION", "UPDATING", "RECOVERING")


def stored_weights(where: str, path: str) -> str:
    """The location replicas load `path` from: a local file is uploaded into the cluster's blob
    store (by content: unchanged weights upload nothing), so no node reads the deployer's disk;
    `file://` paths on shared storage are read in place; `raygpu-blob://` must already be stored."""
    from deployments.node.blobs import blobs, upload

    if is_location(path):
        try:
            location = parse_location(path)
        except ValueError as exc:
            raise DeployError(f"{where}: {exc}") from None
        if location.kind == "blob" and not ray.get(blobs().has.remote(location.path)):
            raise DeployError(f"{where}: the cluster has no weights blob {location.path}; deploy the file instead")
        return location.uri
    resolved = Path(path).expanduser().resolve()
    try:
        fingerprint(resolved)
    except FileNotFoundError as exc:
        raise DeployError(
            f"{where}: {exc}; give a file on this machine (it is uploaded) or file:///path on storage every node mounts"
        ) from None
    try:
        location, _ = upload(resolved, admin_key())
    except PermissionError as exc:
        raise DeployError(f"{where}: the cluster refused the upload ({exc})") from None
    return location.uri


def _live_entry(app: str) -> dict[str, Any] | None:
    return ray.get(store().live_app.remote(app))


def live_serve_app(app: str) -> str:
    """The Serve application running the live version of `app`."""
    entry = _live_entry(app)
    if entry is None or not entry["functions"]:
        raise NotFoundError(f"app {app!r} is not deployed; `raygpu ls` lists the deployed apps")
    return entry["functions"][0]["serve_app"]


def prepare_units(app: App, store_weights: Callable[[str, str], str] | None = None) -> list[PreparedUnit]:
    """What a deploy ships of each unit, made where its code is loaded: the spec (weights as
    stored locations, via `store_weights(where, path)`), the pickled code and the HTTP routes."""
    store_weights = store_weights or stored_weights
    prepared = []
    for name, (spec, code) in app.units.items():
        try:
            kind = kind_of(spec)
            kind.check_spec(spec)
        except ValueError as exc:
            raise DeployError(f"{app.name}/{name}: {exc}") from None
        if spec.torch_model is not None:
            weights = {
                model_id: store_weights(f"{app.name}/{spec.name}: model {model_id!r}", path)
                for model_id, path in spec.torch_model.weights.items()
            }
            spec = spec.model_copy(update={"torch_model": spec.torch_model.model_copy(update={"weights": weights})})
        try:
            payload = cloudpickle.dumps(code)
        except Exception as exc:
            raise DeployError(f"{app.name}/{name} cannot be shipped to replicas: {exc}") from None
        prepared.append(PreparedUnit(spec=spec, payload=payload, routes=kind.routes(app.name, spec, code)))
    return prepared


def deploy_app(
    app: App, source: str, wait_s: float = constants.READY_TIMEOUT_S, metered: bool = True, check: bool = False
) -> DeployResult:
    """Record a new version and roll it out beside the live one (see roll_out)."""
    return roll_out(app.name, source, prepare_units(app), wait_s=wait_s, metered=metered, check=check)


def list_apps() -> AppList:
    apps = ray.get(store().live_apps.remote())
    return AppList(
        apps=[
            AppSummary(
                name=a["name"],
                version=a["version"],
                deployed_at=a["live_at"],
                source=a["source"],
                functions=[f["spec"]["name"] for f in a["functions"]],
            )
            for a in apps
        ]
    )


def in_phase_order(phases: dict[str, float]) -> dict[str, float]:
    """Start phases from the call that found no replica to the first response."""
    order = {name: i for i, name in enumerate((*TRIGGER_PHASES, *PHASES))}
    return dict(sorted(phases.items(), key=lambda item: order.get(item[0], len(order))))


def replica_nodes() -> set[str]:
    """The nodes that run a replica of a user app now."""
    nodes = set()
    for name, details in serve_details().get("applications", {}).items():
        if not name.startswith(constants.USER_APP_PREFIX):
            continue
        for deployment in details.get("deployments", {}).values():
            nodes.update(r["node_id"] for r in deployment.get("replicas", []) if r.get("node_id"))
    return nodes


PARKED_MESSAGE = "at rest out of Serve (`raygpu up --park-after`); its next call or pre-warm brings it back"


def app_status(app: str) -> AppStatus:
    control = store()
    entry = ray.get(control.live_app.remote(app))
    if entry is None:
        raise NotFoundError(f"app {app!r} is not deployed; `raygpu ls` lists the deployed apps")
    live_serve_app = entry["functions"][0]["serve_app"] if entry["functions"] else ""
    serve_app = serve_details().get("applications", {}).get(live_serve_app, {})
    start_phases: dict[str, Any] = {}
    try:
        start_phases = ray.get(meter().start_phases.remote(app), timeout=10)
    except Exception:
        pass  # the meter is restarting: status without start phases
    parked = set(ray.get(control.parked.remote()).get(app, []))
    cancels = ray.get(control.cancel_replacements.remote(app))
    units = [DeployedFunction.model_validate(raw) for raw in entry["functions"]]
    schedules = ray.get(control.schedule_summary.remote(app, [u.spec.name for u in units if u.spec.schedule]))
    warm = app_worker_notes(app, units) if any(runs_ahead(u.spec) for u in units) else {}
    functions = []
    node_types: list[NodeType] | None = None
    for deployed in units:
        details = serve_app.get("deployments", {}).get(deployed.deployment, {})
        if not details and deployed.spec.name in parked:
            details = {"status": "PARKED", "target_num_replicas": 0, "message": PARKED_MESSAGE}
        replicas = details.get("replicas", [])
        waiting_for_node = None
        if any(not r.get("node_id") and r.get("state") in STARTING_STATES for r in replicas):
            node_types = cluster_node_types() if node_types is None else node_types
            wanted = replica_request(deployed.spec, worker_resource()).resources(deployed.accelerator)
            waiting_for_node = node_type_for(wanted, node_types)
        counts = ReplicaCounts(
            running=sum(1 for r in replicas if r.get("state") == "RUNNING"),
            starting=sum(1 for r in replicas if r.get("state") in STARTING_STATES),
            stopping=sum(1 for r in replicas if r.get("state") == "STOPPING"),
        )
        event = ray.get(control.last_scale_event.remote(app, deployed.spec.name))
        functions.append(
            FunctionStatus(
                name=deployed.spec.name,
                kind=deployed.spec.kind,
                route=kind_of(deployed.spec).route_pattern(app, deployed.spec),
                gpu=deployed.spec.gpu_label,
                accelerator=deployed.accelerator,
                replicas=counts,
                target=int(details.get("target_num_replicas", counts.running)),
                last_scale_event=ScaleEvent.model_validate(event) if event else None,
                status=str(getattr(details.get("status"), "value", details.get("status") or "UNKNOWN")),
                message=details.get("message", "") or "",
                replica_details=[
                    ReplicaInfo(
                        replica_id=r.get("replica_id", ""),
                        state=str(getattr(r.get("state"), "value", r.get("state"))),
                        pid=r.get("pid"),
                        node_id=r.get("node_id"),
                        start_time=r.get("start_time_s"),
                    )
                    for r in replicas
                ],
                last_start_phases=in_phase_order(start_phases.get(f"{app}/{deployed.spec.name}", {}).get("phases", {})),
                waiting_for_node=waiting_for_node,
                cancels=cancels.get(deployed.spec.name, {}),
                schedule=schedule_status(deployed.spec, entry["live_at"], schedules.get(deployed.spec.name)),
                warm_workers=warm.get(deployed.spec.name),
            )
        )
    url = None
    try:
        url = public_url()
    except NoClusterError:
        pass
    return AppStatus(
        app=app,
        version=entry["version"],
        deployed_at=entry["live_at"],
        source=entry["source"],
        gateway_url=url,
        functions=functions,
    )


def app_worker_notes(app: str, units: list[DeployedFunction]) -> dict[str, str]:
    """Per unit of `app` that asks for app-warm workers: on how many nodes one holds it, or why none
    does."""
    from deployments.node.warm_pool import pool_stats

    held: dict[str, int] = {}
    reasons = {u.spec.name: why for u in units if runs_ahead(u.spec) and (why := app_worker_refusal(u.spec))}
    try:
        stats = pool_stats()
    except Exception:
        stats = []
    for node in stats:
        for unit in (node.get("apps") or {}).get("units", []):
            if unit["app"] != app:
                continue
            name = unit["function"]
            held[name] = held.get(name, 0) + sum(1 for w in unit["idle"] if w["holds"])
            if unit["reason"]:
                reasons[name] = unit["reason"]
            elif not unit["kept"]:
                reasons.setdefault(name, "over the node's --warm-memory budget (least recently called)")
    notes = {}
    for name in set(held) | set(reasons):
        if name in reasons and not held.get(name):
            notes[name] = f"no warm worker holds it: {reasons[name]}"
        else:
            notes[name] = f"held by warm workers on {held.get(name, 0)} node(s)"
    return notes


def schedule_status(spec: FunctionSpec, live_at: float | None, summary: dict[str, Any] | None) -> ScheduleStatus | None:
    """A scheduled function's schedule, next run (as the scheduler plans it; computed from the
    schedule until it has published) and last run."""
    if spec.schedule is None:
        return None
    summary = summary or {}
    next_run = summary.get("next_due")
    if next_run is None:
        next_run = next_due_after(spec.schedule, time.time(), live_at or time.time())
    last = summary.get("last_run")
    return ScheduleStatus(
        schedule=spec.schedule.describe(),
        next_run=next_run,
        last_run=ScheduledRunInfo(**last) if last else None,
    )


def stop_app(app: str) -> None:
    control = store()
    if ray.get(control.live_app.remote(app)) is None:
        raise NotFoundError(f"app {app!r} is not deployed; `raygpu ls` lists the deployed apps")
    _, generation = admin_call("delete_app", app)
    try:
        wait_for_gateway(gateway_url(), generation, constants.GATEWAY_PICKUP_TIMEOUT_S)
    except (NoClusterError, DeployError):
        pass
    retire_versions(app, keep="", blocking=True)


def source_label(path: Path, digest: str) -> str:
    return f"{path.resolve()}@{digest}"


def push_weights(app: str, function: str, path: str, model: str | None = None) -> dict[str, Any]:
    """Make `path` the current weights of a model of a running torch deployment; its replicas load
    them between batches (no redeploy, no dropped call). Returns the new version."""
    entry = ray.get(store().live_app.remote(app))
    if entry is None:
        raise NotFoundError(f"app {app!r} is not deployed; `raygpu ls` lists the deployed apps")
    spec = next(
        (FunctionSpec.model_validate(f["spec"]) for f in entry["functions"] if f["spec"]["name"] == function), None
    )
    if spec is None or spec.torch_model is None:
        raise NotFoundError(
            f"{app}/{function} is not a torch model deployment (`raygpu status {app}` lists its functions)"
        )
    model = model or spec.torch_model.default_model
    if model not in spec.torch_model.weights:
        raise NotFoundError(f"{app}/{function} has no model {model!r}; models: {', '.join(spec.torch_model.weights)}")
    where = f"{app}/{function}: model {model!r}"
    if not is_location(path):
        local = str(Path(path).expanduser().resolve())
        try:
            fingerprint(local)
        except FileNotFoundError as exc:
            raise DeployError(str(exc)) from None
        check_weights_fit(app, function, model, local)  # before anything is uploaded
    stored = stored_weights(where, path)
    if is_location(path):
        try:
            check_weights_fit(app, function, model, readable_here(stored))
        except ImportError:
            pass  # a head without torch: the replicas check the weights when they load them
    version = admin_call("set_weights", app, function, model, stored, fingerprint(stored), "push")
    return {"app": app, "function": function, "model": model, "version": version, "path": stored}


def check_weights_readable(path: str) -> None:
    """Refuse a file that is not a weights file (before it is uploaded anywhere)."""
    from deployments.engines.torch_engine import weights_signature

    try:
        weights_signature(path)
    except ValueError as exc:
        raise DeployError(f"refused: {exc}") from None


def check_weights_fit(app: str, function: str, model: str, path: str) -> None:
    """Refuse weights that are not a weights file, or whose tensors (names, shapes, dtypes) differ
    from the ones the model runs now: replicas would fail to load them."""
    from deployments.engines.torch_engine import signature_mismatches, weights_signature

    try:
        new = weights_signature(path)
    except ValueError as exc:
        raise DeployError(f"refused: {exc}") from None
    current = ray.get(store().current_weights.remote(app, function)).get(model)
    if current is None:
        return
    try:
        running = weights_signature(readable_here(current["path"]))
    except (ValueError, OSError):
        return  # the current weights cannot be read from here: nothing to compare against
    problems = signature_mismatches(running, new)
    if problems:
        raise DeployError(
            f"refused: {path} does not fit {app}/{function} model {model!r} "
            f"(v{current['version']} keeps serving): " + "; ".join(problems)
        )


def readable_here(path: str) -> str:
    """A file on this machine with the weights at `path` (a blob is fetched into $RAYGPU_HOME)."""
    from deployments.node.blobs import local_copy
    from raygpu.sdk.home import raygpu_home

    if not is_location(path):
        return path
    location = parse_location(path)
    return str(local_copy(location.path, raygpu_home() / "blobs")) if location.kind == "blob" else location.path


def current_weights(app: str, function: str) -> dict[str, dict[str, Any]]:
    return ray.get(store().current_weights.remote(app, function))
