"""The parker: takes functions at rest out of Serve and brings them back when wanted.

Serve's controller works on every deployment on every tick, replicas or not; a head with a
thousand functions at zero spends most of a core on them. A function quiet at zero for
`park_after_s`, whose plan wants no replica within as long again (autoscaling/parking.py), leaves its
version's Serve application (the application is deployed again without it; every other deployment
keeps its replicas, as each is versioned by its digest). The store publishes which functions are
parked; a caller (gateway, call runner, Python client) asks `unpark` first and the function is back
in Serve within a controller tick, with its learned policy state; a parked function also returns
PARK_WAKE_LEAD_S ahead of the pre-warm its plan made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from autoscaling.parking import QuietReport, parked_after
from deployments import constants
from deployments.head_actors import start_head_actor
from deployments.node.app_workers import app_env_switches, app_units, held_now
from deployments.serve_apps import (
    ServeAppOptions,
    busy_deployments,
    delete_app,
    deployments_by_app,
    options_from,
    options_key,
    run_version,
    wait_deployed,
    wait_gone,
)
from deployments.spec import DeployedFunction
from deployments.store.actor import get_store

logger = logging.getLogger(f"ray.serve.{__name__}")


@dataclass
class LiveVersion:
    """The parker's view of one app's live version."""

    app: str
    version: int
    serve_app: str
    functions: list[DeployedFunction]
    parked: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    payloads: dict[str, bytes] | None = None  # a version's code never changes: read once
    options: ServeAppOptions | None = None
    back_at: dict[str, float] = field(default_factory=dict)  # when each function was last brought back
    live_at: float = 0.0  # when this version went live: its functions were not at rest before

    def quiet_since(self, name: str, raw_reports: dict[str, Any]) -> float:
        report = QuietReport.from_wire(raw_reports.get(f"{self.app}/{name}"))
        return max(report.since if report else time.time(), self.back_at.get(name, 0.0), self.live_at)

    @property
    def names(self) -> set[str]:
        return {f.spec.name for f in self.functions}

    def at_rest(self, raw_reports: dict[str, Any], names: set[str]) -> dict[str, QuietReport | None]:
        """The quiet reports of `names`, none earlier than the version went live or each came back."""
        reports: dict[str, QuietReport | None] = {}
        for name in names:
            report = QuietReport.from_wire(raw_reports.get(f"{self.app}/{name}"))
            reports[name] = report and QuietReport(self.quiet_since(name, raw_reports), report.wake_at)
        return reports

    def parked_after(self, raw_reports: dict[str, Any], park_after_s: float, now: float) -> set[str]:
        """The functions parked after this pass. A function is at rest no earlier than its version
        went live or it was last brought back, whatever an earlier report says."""
        reports = {}
        for name in self.names:
            report = QuietReport.from_wire(raw_reports.get(f"{self.app}/{name}"))
            if report is not None:
                floor = max(self.back_at.get(name, 0.0), self.live_at)
                reports[name] = report if report.since >= floor else QuietReport(floor, report.wake_at)
        minimums = {f.spec.name: f.spec.min_containers for f in self.functions}
        return parked_after(now, minimums, self.parked, reports, park_after_s, constants.PARK_WAKE_LEAD_S)


class Parker:
    """Head actor; every change to a version's Serve application goes through its lock for that app."""

    def __init__(self, credential: str):
        self._credential = credential
        self.store = get_store()
        self.live: dict[str, LiveVersion] = {}
        self.parks = 0
        self.unparks = 0
        self.env_switches = 0
        self._held: dict[str, float] = {}  # app unit key -> when a node last reported holding it
        self.last_error: str | None = None
        self._synced = False
        self._read_generation = -1  # the routing table's generation when live versions were last read
        self._loop = asyncio.get_running_loop().create_task(self._run())

    # --- what callers use ----------------------------------------------------------------------
    async def unpark(self, app: str, function: str) -> bool:
        """Bring `app/function` back into Serve if it is parked; True once it is deployed (or was).
        False when the app or function is not live (the caller answers as for any unknown one)."""
        await self._sync_once()
        entry = self.live.get(app)
        if entry is None or not isinstance(function, str) or function not in entry.names:
            entry = await self._refresh_app(app)
            if entry is None or function not in entry.names:
                return False
        if function not in entry.parked and not entry.lock.locked():
            return True
        await self._read_live()  # a version that went live since holds every function
        entry = self.live.get(app)
        if entry is None or function not in entry.names:
            return False
        async with entry.lock:  # a pass may be parking it right now: wait for it, then look again
            if function in entry.parked and self.live.get(app) is entry:
                await self._apply(entry, entry.parked - {function}, called=function)
                entry.back_at[function] = time.time()
                self.unparks += 1
                await self.store.forget_quiet.remote([f"{app}/{function}"])
        return True

    async def state(self) -> dict[str, Any]:
        return {
            "parked": {app: sorted(e.parked) for app, e in self.live.items() if e.parked},
            "parks": self.parks,
            "unparks": self.unparks,
            "env_switches": self.env_switches,
            "last_error": self.last_error,
        }

    async def resync(self) -> dict[str, list[str]]:
        """Read what is parked from Serve again (after the control plane redeployed applications)."""
        self._synced = False
        await self._sync_once()
        return {app: sorted(e.parked) for app, e in self.live.items() if e.parked}

    # --- the loop --------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(constants.PARK_CHECK_INTERVAL_S)
            try:
                await self._pass()
                self.last_error = None
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("raygpu parker: a pass failed; the next one tries again")

    async def _pass(self) -> None:
        await self._sync_once()
        park_after_s = await self._park_after_s()
        live = await self._read_live()
        raw_reports = await self.store.quiet_functions.remote()
        for app, entry in live.items():
            if not any(f"{app}/{name}" in raw_reports for name in entry.names) and not entry.parked:
                continue  # nothing at rest here
            async with entry.lock:  # decided under the lock: a call may have brought one back meanwhile
                if self.live.get(app) is not entry:
                    continue
                wanted = entry.parked_after(raw_reports, park_after_s, time.time())
                newly = wanted - entry.parked
                if newly:
                    # published first: callers from now on come through `unpark` (this lock); a call
                    # a gateway took before it saw that recorded its arrival meanwhile, and keeps its
                    # function in Serve (a call queued for a deployment Serve deletes would hang)
                    await self.store.set_parked.remote(self._credential, app, sorted(wanted | entry.parked))
                    await asyncio.sleep(constants.PARK_PUBLISH_GRACE_S)
                    wanted -= newly - await self._still_at_rest(entry, newly, raw_reports)
                if wanted == entry.parked:
                    continue
                woken = entry.parked - wanted
                self.parks += len(wanted - entry.parked)
                self.unparks += len(woken)
                await self._apply(entry, wanted)
                entry.back_at.update({n: time.time() for n in woken})
                if woken:
                    await self.store.forget_quiet.remote([f"{app}/{n}" for n in woken])
        await self._switch_app_envs(live, raw_reports)
        published = await self.store.parked.remote()
        for app, entry in live.items():
            if sorted(entry.parked) != published.get(app, []):
                await self.store.set_parked.remote(self._credential, app, sorted(entry.parked))
        for app in set(published) - set(live):  # stopped apps
            await self.store.set_parked.remote(self._credential, app, [])

    async def _switch_app_envs(self, live: dict[str, LiveVersion], raw_reports: dict[str, Any]) -> None:
        """A unit that takes app-warm workers runs in its own runtime env while a node holds such a
        worker (its replica lands on it), in its flavour's generic one otherwise (a warm worker with
        torch imported, where its own env would start a fresh process); changed only at rest."""
        units_by_app = {app: units for app, entry in live.items() if (units := app_units(app, entry.functions))}
        if not units_by_app:
            return
        self._held = await self.store.held_app_units.remote()
        for app, units in units_by_app.items():
            entry = live[app]
            units = {name: key for name, key in units.items() if name not in entry.parked}
            options = await self._options(entry)
            reports = entry.at_rest(raw_reports, set(units))
            switches = app_env_switches(
                time.time(), units, set(options.app_workers), self._held, reports, constants.PARK_WAKE_LEAD_S
            )
            if not switches:
                continue
            async with entry.lock:  # as parking: a call may have come meanwhile
                if self.live.get(app) is not entry:
                    continue
                switches = await self._still_at_rest(entry, switches - entry.parked, raw_reports)
                if switches and await self._still_live(entry):
                    await self._redeploy(entry, set(options.app_workers) ^ switches)
                    self.env_switches += len(switches)
                    logger.info("raygpu parker: %s: app-warm env now for %s", app, sorted(entry.options.app_workers))

    async def _still_at_rest(self, entry: LiveVersion, names: set[str], raw_reports: dict[str, Any]) -> set[str]:
        """Those of `names` with no arrival since they came to rest and no replica in Serve, none
        wanted (a quiet report can trail the policy): asked under the app's lock, right before a
        change to their deployments."""
        if not names:
            return set()
        since = {n: entry.quiet_since(n, raw_reports) for n in names}
        arrived = await self.store.last_arrivals.remote(min(since.values()))
        quiet = {n for n in names if arrived.get(f"{entry.app}/{n}", 0.0) < since[n]}
        return quiet - await asyncio.to_thread(busy_deployments, entry.serve_app, quiet)

    async def _redeploy(self, entry: LiveVersion, app_workers: set[str]) -> None:
        """Deploy the functions `entry` keeps in Serve again, those of `app_workers` in their app
        unit's runtime env (the others' options unchanged: Serve leaves their replicas be)."""
        payloads, options = await self._version_code(entry)
        options = entry.options = options.model_copy(update={"app_workers": sorted(app_workers)})
        await self.store.set_setting.remote(self._credential, options_key(entry.serve_app), options.model_dump())
        kept = entry.names - entry.parked
        await asyncio.to_thread(
            run_version, entry.serve_app, entry.app, entry.version, entry.functions, payloads, options, kept
        )
        await asyncio.to_thread(wait_deployed, entry.serve_app, kept, constants.PARK_APP_GONE_WAIT_S)

    async def _park_after_s(self) -> float:
        value = await self.store.get_setting.remote("park_after_s", constants.DEFAULT_PARK_AFTER_S)
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            logger.warning("raygpu parker: setting park_after_s=%r is not a number; parking is off", value)
            return 0.0

    async def _read_live(self, force: bool = False) -> dict[str, LiveVersion]:
        """The live versions, keeping what is known of those unchanged; a new live version is a
        new Serve application holding every function. Read again only when the routing table
        moved (a deploy, a stop, a park), so an idle pass costs the store next to nothing."""
        generation = (await self.store.ping.remote())["generation"]
        if not force and generation == self._read_generation:
            return self.live
        self._read_generation = generation
        current: dict[str, LiveVersion] = {}
        for raw in await self.store.live_apps.remote():
            functions = [DeployedFunction.model_validate(f) for f in raw["functions"]]
            if not functions:
                continue
            known = self.live.get(raw["name"])
            if known is not None and known.version == raw["version"]:
                current[raw["name"]] = known
            else:
                current[raw["name"]] = LiveVersion(
                    raw["name"], raw["version"], functions[0].serve_app, functions, live_at=float(raw["live_at"] or 0.0)
                )
        self.live = current
        return current

    async def _refresh_app(self, app: str) -> LiveVersion | None:
        await self._read_live(force=True)
        return self.live.get(app)

    async def _sync_once(self) -> None:
        """What is parked is what the live versions hold that their Serve applications lack."""
        if self._synced:
            return
        self._synced = True
        live = await self._read_live(force=True)
        deployed = await asyncio.to_thread(deployments_by_app)
        for entry in live.values():
            entry.parked = entry.names - deployed.get(entry.serve_app, set())

    # --- changing a Serve application ----------------------------------------------------------
    async def _apply(self, entry: LiveVersion, parked: set[str], called: str | None = None) -> None:
        """Deploy `entry`'s Serve application with every function but `parked` (delete it when
        that is none). Parking publishes first (callers then come through `unpark`, which waits on
        this app's lock); bringing back publishes once Serve has the deployments. A function brought
        back for a call (`called`) starts its replica with the deployment, without waiting for
        the call to be seen; one brought back for its pre-warm starts at its minimum and its
        policy starts the replica when planned."""
        if not await self._still_live(entry):
            return  # a new version went live meanwhile: its application holds every function
        newly_parked = parked - entry.parked
        if newly_parked:
            await self.store.set_parked.remote(self._credential, entry.app, sorted(parked | entry.parked))
        kept = entry.names - parked
        if kept:
            payloads, options = await self._version_code(entry)
            initial = dict(options.initial_replicas)
            minimums = {f.spec.name: f.spec.min_containers for f in entry.functions}
            coming_back = entry.parked - parked  # each a new deployment, with new options
            held = held_now(time.time(), app_units(entry.app, entry.functions), self._held)
            app_workers = (set(options.app_workers) - coming_back) | (held & coming_back)
            for name in coming_back:
                initial[name] = max(minimums[name], 1 if name == called else 0)
            if initial != options.initial_replicas or app_workers != set(options.app_workers):
                # every later build gives the deployments in Serve the options they run with
                update = {"initial_replicas": initial, "app_workers": sorted(app_workers)}
                options = entry.options = options.model_copy(update=update)
                key = options_key(entry.serve_app)
                await self.store.set_setting.remote(self._credential, key, options.model_dump())
            if not entry.names - entry.parked:  # it was emptied: wait for Serve to have deleted it
                await asyncio.to_thread(wait_gone, entry.serve_app, constants.PARK_APP_GONE_WAIT_S)
            await asyncio.to_thread(
                run_version, entry.serve_app, entry.app, entry.version, entry.functions, payloads, options, kept
            )
            await asyncio.to_thread(wait_deployed, entry.serve_app, kept, constants.PARK_APP_GONE_WAIT_S)
        else:
            await asyncio.to_thread(delete_app, entry.serve_app)
        entry.parked = set(parked)
        await self.store.set_parked.remote(self._credential, entry.app, sorted(parked))
        logger.info(
            "raygpu parker: %s v%d runs %d function(s), %d parked", entry.app, entry.version, len(kept), len(parked)
        )

    async def _still_live(self, entry: LiveVersion) -> bool:
        """Asked right before changing Serve: a rollout may have retired this version just now."""
        raw = await self.store.live_app.remote(entry.app)
        return raw is not None and raw["version"] == entry.version

    async def _version_code(self, entry: LiveVersion) -> tuple[dict[str, bytes], ServeAppOptions]:
        if entry.payloads is None:
            entry.payloads = await self.store.version_payloads.remote(self._credential, entry.app, entry.version)
        return entry.payloads, await self._options(entry)

    async def _options(self, entry: LiveVersion) -> ServeAppOptions:
        if entry.options is None:
            entry.options = options_from(await self.store.get_setting.remote(options_key(entry.serve_app), None))
        return entry.options


async def bring_back(app: str, function: str, wait_s: float = constants.PARK_APP_GONE_WAIT_S) -> bool:
    """For callers that do not follow the published parked set (spawned calls, the Python client):
    make sure `app/function` is in Serve, retrying while the parker restarts. False when it is not
    deployed at all; raises RuntimeError when the parker stays unreachable for `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return bool(await get_parker().unpark.remote(app, function))
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the control plane's parker is unreachable ({exc}); retry the call") from None
            await asyncio.sleep(0.5)


def start_parker(credential: str) -> Any:
    return start_head_actor(Parker, constants.PARKER_ACTOR_NAME, credential, max_concurrency=64)


def get_parker() -> Any:
    return ray.get_actor(constants.PARKER_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)
