"""Rolling a new version out beside the live one: each version is its own Serve application, so a
version that cannot start is found before it takes traffic and removed while the live one keeps
serving (the same side-by-side versions an A/B split routes between).

A version is checked through its first replicas when a function keeps `min_containers > 0`, and
through a start check (one replica started, then stopped) for every changed function with
`raygpu deploy --check`."""

from __future__ import annotations

import hashlib
import time

import ray

from deployments import constants
from deployments.node.app_workers import app_units, held_now
from deployments.node.weight_cache import fingerprint
from deployments.serve_apps import (
    ServeAppOptions,
    app_exists,
    app_names,
    app_state,
    delete_app,
    options_key,
    run_version,
    running_replicas,
)
from deployments.spec import DeployedFunction, FunctionSpec, version_app_name, version_app_prefix
from deployments.weights_location import is_location
from raygpu.ops.contracts import DeployResult, PreparedUnit
from raygpu.ops.placement import resolve_accelerator, worker_resource
from raygpu.sdk.control import admin_call, gateway_url, public_url, store, wait_for_gateway
from raygpu.sdk.errors import DeployError, NoClusterError

Unit = tuple[FunctionSpec, bytes, str | None]


def held_units(app_name: str, deployed: list[DeployedFunction]) -> list[str]:
    """The functions whose app unit (same code) a node holds a warm worker of already: their
    deployments take it from the start (the others once a worker holds them; deployments/parking.py)."""
    units = app_units(app_name, deployed)
    if not units:
        return []
    return sorted(held_now(time.time(), units, ray.get(store().held_app_units.remote())))


def digest_of(spec: FunctionSpec, payload: bytes) -> str:
    """What identifies a function's deployable content: its spec and its pickled code."""
    return hashlib.sha256(spec.model_dump_json().encode() + b"\0" + payload).hexdigest()


def functions_to_check(
    specs: dict[str, FunctionSpec], digests: dict[str, str], previous: dict[str, str], check: bool
) -> tuple[set[str], set[str]]:
    """(functions checked through the replicas they keep running, functions given a start check)."""
    kept_running = {name for name, spec in specs.items() if spec.min_containers > 0}
    start_checked = {
        name for name in specs if check and name not in kept_running and digests[name] != previous.get(name)
    }
    return kept_running, start_checked


def warm_handoff(running: dict[str, int], specs: dict[str, FunctionSpec], free_gpus: float) -> dict[str, int]:
    """How many replicas each function of a new version starts with: as many as the live version
    runs, as far as free GPUs allow (the live version keeps its own until the switch)."""
    initial: dict[str, int] = {}
    for name, spec in specs.items():
        wanted = min(running.get(name, 0), spec.max_containers)
        request = spec.gpu_request
        if request is not None and wanted > spec.min_containers:
            extra = int(free_gpus // request.count) if request.count else wanted
            wanted = min(wanted, spec.min_containers + extra)
            free_gpus -= max(wanted - spec.min_containers, 0) * request.count
        initial[name] = max(wanted, spec.min_containers)
    return initial


def wait_until_running(serve_app: str, wait_s: float) -> None:
    """Block until the Serve application runs; DeployError with Serve's reason when it fails or
    does not get there in time (replicas that cannot be placed, a start that hangs)."""
    deadline = time.monotonic() + wait_s
    last = ""
    while time.monotonic() < deadline:
        status = app_state(serve_app)
        if status.state != "NOT_STARTED":
            if status.state == "RUNNING":
                return
            last = "; ".join(status.messages)
            if status.state in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise DeployError(f"the new version did not start: {last or status.state}")
        time.sleep(0.25)
    raise DeployError(
        f"the new version did not start within {wait_s:g} s"
        + (f": {last}" if last else "")
        + " (the live version keeps serving; `raygpu status` shows it)"
    )


def startup_errors_of_running(serve_app: str, names: set[str], wait_s: float) -> dict[str, str]:
    """The startup error of each named deployment's replicas in a running Serve application."""
    errors: dict[str, str] = {}
    for name in sorted(names):
        from ray import serve

        handle = serve.get_deployment_handle(name, app_name=serve_app)
        try:
            error = handle.start_check.remote().result(timeout_s=wait_s)
        finally:
            handle.shutdown()  # its router would otherwise push metrics on after the driver detaches
        if error:
            errors[name] = error
    return errors


def run_start_checks(
    app: str, version: int, units: list[Unit], worker_resource: str | None, wait_s: float
) -> dict[str, str]:
    """Start one replica of each unit outside Serve, wait for it to load and stop; the errors."""
    from deployments.replicas.start_check import start_checks

    checks = start_checks(app, version, units, worker_resource)
    errors: dict[str, str] = {}
    try:
        for name, (_, ref) in checks:
            try:
                error = ray.get(ref, timeout=wait_s)
            except ray.exceptions.GetTimeoutError:
                error = (
                    f"its replica did not start within {wait_s:g} s (the cluster may lack the resources it asks for)"
                )
            except ray.exceptions.RayError as exc:
                error = f"its replica failed: {exc}"
            if error:
                errors[name] = error
    finally:
        for _, (actor, _) in checks:
            ray.kill(actor, no_restart=True)
    return errors


def retire_versions(app: str, keep: str, blocking: bool = False) -> list[str]:
    """Delete the Serve applications of every other version of `app` (their replicas finish their
    calls first; `blocking` waits until they are gone); return their names."""
    prefix = version_app_prefix(app)
    legacy = f"{constants.USER_APP_PREFIX}{app}"
    retired = [name for name in app_names() if (name.startswith(prefix) or name == legacy) and name != keep]
    for name in retired:
        delete_app(name, blocking=blocking)
    return retired


def roll_out(
    app_name: str,
    source: str,
    prepared: list[PreparedUnit],
    wait_s: float = constants.READY_TIMEOUT_S,
    metered: bool = True,
    check: bool = False,
) -> DeployResult:
    """Record a new version and roll it out beside the live one; the live version keeps serving
    until the new one is live, and keeps serving if the new one cannot start.

    The new version is checked before it takes traffic through the replicas of functions with
    `min_containers > 0`, and with `check=True` (`raygpu deploy --check`) through a start check of
    every function that changed since the live version. A failed check removes the new version and
    raises DeployError with the unit's startup error.

    `metered=False` (Python API only, for operators measuring metering overhead) keeps the app's
    replicas out of the ledger: nothing of it is billed."""
    named = sorted({name for unit in prepared for name in unit.spec.secrets})
    missing = ray.get(store().missing_secrets.remote(named)) if named else []
    if missing:
        users = {n: [u.spec.name for u in prepared if n in u.spec.secrets] for n in missing}
        raise DeployError(
            "; ".join(f"{app_name}/{', '.join(users[n])} names secret {n!r}, which does not exist" for n in missing)
            + f" (`raygpu secret create {missing[0]} --from-dotenv FILE`); nothing was changed"
        )
    units: list[tuple[FunctionSpec, bytes, str | None]] = []
    off_head = worker_resource()
    deployed: list[DeployedFunction] = []
    for unit in prepared:
        spec = unit.spec
        for model_id, path in (spec.torch_model.weights if spec.torch_model else {}).items():
            if not is_location(path):
                raise DeployError(f"{app_name}/{spec.name}: model {model_id!r}: {path} was not uploaded")
        accelerator = resolve_accelerator(app_name, spec, off_head)
        units.append((spec, unit.payload, accelerator))
        deployed.append(
            DeployedFunction(
                spec=spec,
                deployment=spec.name,
                accelerator=accelerator,
                routes=unit.routes,
                digest=digest_of(spec, unit.payload),
            )
        )
    live = ray.get(store().live_app.remote(app_name))
    previous = [DeployedFunction.model_validate(f) for f in live["functions"]] if live else []
    specs = {spec.name: spec for spec, _, _ in units}
    kept_running, start_checked = functions_to_check(
        specs, {d.spec.name: d.digest for d in deployed}, {d.spec.name: d.digest for d in previous}, check
    )
    version = admin_call(
        "begin_version",
        app_name,
        source,
        [d.model_dump(mode="json") for d in deployed],
        {spec.name: payload for spec, payload, _ in units},
    )
    serve_app = version_app_name(app_name, version)
    previous_label = f"v{live['version']} keeps serving" if live else "nothing was deployed"

    def refuse(reason: str) -> DeployError:
        if app_exists(serve_app):
            delete_app(serve_app)
        admin_call("mark_failed", app_name, version)
        return DeployError(f"{app_name} v{version} was not deployed ({previous_label}): {reason}")

    for spec, _, _ in units:
        if spec.torch_model is not None:  # the weights a deploy names become current unless they already are
            for model_id, path in spec.torch_model.weights.items():
                admin_call("set_weights", app_name, spec.name, model_id, path, fingerprint(path), "deploy", True)
    if start_checked:
        errors = run_start_checks(app_name, version, [u for u in units if u[0].name in start_checked], off_head, wait_s)
        if errors:
            raise refuse(_startup_failures(app_name, errors))
    running = running_replicas(previous[0].serve_app) if previous else {}
    initial = warm_handoff(running, specs, ray.available_resources().get("GPU", 0.0))
    options = ServeAppOptions(
        metered=metered, initial_replicas=initial, worker_resource=off_head, app_workers=held_units(app_name, deployed)
    )
    try:
        admin_call("set_setting", options_key(serve_app), options.model_dump())
        run_version(serve_app, app_name, version, deployed, {spec.name: payload for spec, payload, _ in units}, options)
    except Exception as exc:
        raise refuse(f"Serve refused it: {exc}") from None
    try:
        wait_until_running(serve_app, wait_s)
        errors = startup_errors_of_running(serve_app, kept_running, wait_s)
    except DeployError as exc:
        raise refuse(str(exc)) from None
    if errors:
        raise refuse(_startup_failures(app_name, errors))
    generation = admin_call("mark_live", app_name, version)
    url = None
    try:
        wait_for_gateway(gateway_url(), generation, wait_s)
        url = public_url()
    except NoClusterError:
        pass
    time.sleep(constants.RETIRE_DELAY_S)  # calls routed just before the switch reach the old version
    retire_versions(app_name, keep=serve_app)
    return DeployResult(
        app=app_name,
        version=version,
        functions=[unit.spec.name for unit in prepared],
        routes=[r.path for d in deployed for r in d.routes],
        gateway_url=url,
        checked=sorted(kept_running | start_checked),
    )


def _startup_failures(app: str, errors: dict[str, str]) -> str:
    return "; ".join(
        f"{app}/{name} could not start: {error} (`raygpu logs {app}/{name}` has the traceback)"
        for name, error in sorted(errors.items())
    )
