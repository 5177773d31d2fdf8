"""The control-plane store: one detached actor on the head node that owns the SQLite state.

Writers (CLI, gateway) call it; readers that must never block (the Serve controller's autoscaling
policy) read a cached snapshot that refreshes in the background (autoscaling/serve_adapter.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import ray

from autoscaling.parking import QuietReport
from deployments import constants
from deployments.head_actors import start_head_actor
from deployments.store.call_methods import SpawnedCallMethods
from deployments.store.db import ARRIVAL_RETENTION_S, RETENTION_TABLES, StateDB
from deployments.store.schedule_methods import ScheduleMethods
from deployments.store.secret_methods import SecretMethods

# A function's pickled code as the store keeps it (weights travel separately, as blobs).
MAX_PAYLOAD_BYTES = 256 * 2**20
ADMIN_REFUSAL = (
    "this call changes the control plane and needs raygpu's admin credential, which only the CLI "
    "holds ($RAYGPU_HOME/admin.key on the machine that ran `raygpu up`); deployed code never has it"
)


class ControlPlaneStore(SpawnedCallMethods, SecretMethods, ScheduleMethods):
    """Async actor over StateDB; every mutation of the routing table bumps `generation`.

    Calls that change what is deployed or who may call it (versions, app deletion, tokens, auth,
    weights, settings) take the admin credential first; the store holds only its hash and refuses
    every such call when it has none. Replicas, the gateway and the autoscaler only read, record
    arrivals and save the policy's state."""

    def __init__(self, db_path: str, admin_hash: str | None = None, internal_hash: str | None = None):
        self.db = StateDB(db_path)
        self.db_path = db_path
        # the operator's admin key, and the credential the control plane that created this store
        # acts with (never written anywhere: a control plane started later uses the operator's key)
        self._admin_hashes = [h for h in (admin_hash, internal_hash) if isinstance(h, str) and h]
        # The routing table's generation never repeats, across restarts too: it continues from the
        # last one persisted, so a gateway holding a table from before a restart always refreshes.
        self.generation = int(self.db.get_setting("generation", 0)) + 1
        self.db.set_setting("generation", self.generation)
        self._changed = asyncio.Event()
        self._weights_changed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._last_prune = 0.0
        self._retention: asyncio.Task | None = None
        self._batch_rows = 1000
        self.longest_retention_batch_s = 0.0
        # Latest arrival per "app/function", kept in memory so the autoscaler's once-a-second
        # snapshot never scans the arrivals table.
        self._last_arrival: dict[str, float] = self.db.last_arrivals(time.time() - ARRIVAL_RETENTION_S)
        self._init_spawned_calls()
        self._init_schedules()
        # Functions at rest at zero ("app/function" -> [since, wake_at]), as their policies report
        # them, and the functions the parker took out of Serve (app -> names): both live in memory
        # only; the policies report again and the parker publishes again after a restart.
        self._quiet: dict[str, list[float | None]] = {}
        self._parked: dict[str, list[str]] = {}
        # When a node's warm pool last reported an idle worker holding each app unit (memory only:
        # the pools report every pass; deployments/node/app_workers.py decides from it)
        self._held_units: dict[str, float] = {}

    def _bump(self) -> int:
        self.generation += 1
        self.db.set_setting("generation", self.generation)
        self._changed.set()
        self._changed = asyncio.Event()
        return self.generation

    def _check_admin(self, credential: Any) -> None:
        """Fail closed: no configured hash, a missing or a wrong credential all refuse the call."""
        if not self._admin_hashes or not isinstance(credential, str) or not credential:
            raise PermissionError(ADMIN_REFUSAL)
        offered = hashlib.sha256(credential.encode()).hexdigest()
        if not any(hmac.compare_digest(offered, known) for known in self._admin_hashes):
            raise PermissionError(ADMIN_REFUSAL)

    async def ping(self) -> dict[str, Any]:
        return {"db_path": self.db_path, "generation": self.generation, "admin": bool(self._admin_hashes)}

    async def check_admin(self, credential: str) -> bool:
        self._check_admin(credential)
        return True

    # --- registry ------------------------------------------------------------------------------
    async def begin_version(
        self,
        credential: str,
        app: str,
        source: str,
        functions: list[dict[str, Any]],
        payloads: dict[str, bytes] | None = None,
    ) -> int:
        self._check_admin(credential)
        payloads = payloads or {}
        if not isinstance(payloads, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) and len(v) <= MAX_PAYLOAD_BYTES for k, v in payloads.items()
        ):
            raise ValueError(f"payloads must map function names to pickled code of at most {MAX_PAYLOAD_BYTES} bytes")
        return self.db.begin_version(app, source, functions, payloads)

    async def version_payloads(self, credential: str, app: str, version: int) -> dict[str, bytes]:
        """A version's code (admin only: it is the user's code)."""
        self._check_admin(credential)
        return self.db.version_payloads(app, version)

    async def mark_live(self, credential: str, app: str, version: int) -> int:
        self._check_admin(credential)
        self.db.mark_live(app, version)
        self._parked.pop(app, None)  # a new live version's application holds every function
        return self._bump()

    async def mark_failed(self, credential: str, app: str, version: int) -> None:
        self._check_admin(credential)
        self.db.mark_failed(app, version)

    async def delete_app(self, credential: str, app: str) -> tuple[bool, int]:
        self._check_admin(credential)
        deleted = self.db.delete_app(app)
        self._parked.pop(app, None)
        return deleted, self._bump()

    async def known_units(self) -> list[str]:
        """Every "app/function" of any recorded version (the meter bills only these)."""
        return sorted(self.db.known_units())

    async def versions(self, app: str) -> list[dict[str, Any]]:
        return self.db.versions(app)

    async def live_apps(self) -> list[dict[str, Any]]:
        return self.db.live_apps()

    async def live_app(self, app: str) -> dict[str, Any] | None:
        """One live app with its live version's functions (None when it is not live)."""
        found = self.db.live_apps(app) if isinstance(app, str) else []
        return found[0] if found else None

    async def routing_table(self, known_generation: int = 0, wait_s: float = 0.0) -> dict[str, Any]:
        """The gateway's view; with `wait_s` > 0 it long-polls until the generation moves past `known`."""
        if wait_s > 0 and known_generation == self.generation:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=wait_s)
            except TimeoutError:
                pass
        return {
            "generation": self.generation,
            "apps": {app["name"]: app for app in self.db.live_apps()},
            "token_hashes": self.db.active_token_hashes(),
            "protected": self.db.protected_apps(),
            "parked": dict(self._parked),
        }

    # --- tokens --------------------------------------------------------------------------------
    async def create_token(self, credential: str, app: str) -> dict[str, Any]:
        self._check_admin(credential)
        token_id, token = self.db.create_token(app)
        return {"id": token_id, "token": token, "generation": self._bump()}

    async def revoke_token(self, credential: str, app: str, token_id: str) -> dict[str, Any]:
        self._check_admin(credential)
        revoked = self.db.revoke_token(app, token_id)
        return {"revoked": revoked, "generation": self._bump() if revoked else self.generation}

    async def set_protected(self, credential: str, app: str, protected: bool) -> dict[str, Any]:
        self._check_admin(credential)
        revoked = self.db.set_protected(app, bool(protected))
        return {"protected": bool(protected), "revoked": revoked, "generation": self._bump()}

    async def is_protected(self, app: str) -> bool:
        return self.db.is_protected(app)

    async def tokens(self, app: str | None = None) -> list[dict[str, Any]]:
        return self.db.tokens(app)

    # --- arrivals and scale events -------------------------------------------------------------
    async def record_arrivals(self, arrivals: list[tuple[str, str, float]]) -> int:
        count = self.db.record_arrivals(arrivals)
        self._arrived.set()
        self._arrived = asyncio.Event()
        for app, function, ts in arrivals:
            key = f"{app}/{function}"
            if ts > self._last_arrival.get(key, 0.0):
                self._last_arrival[key] = ts
        now = time.time()
        if now - self._last_prune > constants.RETENTION_INTERVAL_S and self._retention is None:
            self._last_prune = now
            self._retention = asyncio.get_running_loop().create_task(self.apply_retention())
        return count

    async def apply_retention(self) -> dict[str, int]:
        """Delete what is past retention in every table, in batches sized to hold the actor's loop
        at most RETENTION_BATCH_BUDGET_S each, yielding between them. Returns rows deleted per table."""
        deleted: dict[str, int] = {}
        try:
            for table in RETENTION_TABLES:
                deleted[table] = 0
                while True:
                    started = time.perf_counter()
                    n = self.db.retention_batch(table, time.time(), self._batch_rows)
                    took = time.perf_counter() - started
                    self.longest_retention_batch_s = max(self.longest_retention_batch_s, took)
                    deleted[table] += n
                    # Aim each batch at half the budget: grow while fast, shrink when slow.
                    if took < constants.RETENTION_BATCH_BUDGET_S / 4:
                        self._batch_rows = min(self._batch_rows * 2, 100_000)
                    elif took > constants.RETENTION_BATCH_BUDGET_S / 2:
                        self._batch_rows = max(self._batch_rows // 2, 100)
                    if n == 0:
                        break
                    await asyncio.sleep(0)
        finally:
            self._retention = None
        return deleted

    async def arrivals(self, app: str, function: str, since: float = 0.0) -> list[float]:
        return self.db.arrivals(app, function, since)

    async def last_arrivals(self, since: float) -> dict[str, float]:
        return {key: ts for key, ts in self._last_arrival.items() if ts >= since}

    async def arrivals_after(self, cursor: int, wait_s: float = 0.0) -> tuple[int, dict[str, list[float]]]:
        """Arrivals recorded after `cursor`; with `wait_s`, wait that long for the first new one
        (the autoscaler keeps one such call open, so a call at zero replicas reaches it at once)."""
        arrived = self._arrived
        last, new = self.db.arrivals_after(cursor)
        if new or wait_s <= 0 or cursor < 0:
            return last, new
        try:
            await asyncio.wait_for(arrived.wait(), wait_s)
        except TimeoutError:
            return last, new
        return self.db.arrivals_after(cursor)

    # --- parking: functions at rest leave Serve (deployments/parking.py) ----------------------
    async def record_quiet(self, changes: dict[str, Any]) -> int:
        """Policies' reports: "app/function" -> [since, wake_at] at rest at zero, or None when busy
        again. Malformed entries are skipped; returns how many were taken."""
        if not isinstance(changes, dict):
            return 0
        taken = 0
        for key, raw in list(changes.items())[: constants.MAX_QUIET_REPORTS]:
            if not isinstance(key, str) or key.count("/") != 1:
                continue
            if raw is None:
                self._quiet.pop(key, None)
            elif QuietReport.from_wire(raw) is not None:
                self._quiet[key] = [float(raw[0]), None if raw[1] is None else float(raw[1])]
            else:
                continue
            taken += 1
        return taken

    async def quiet_functions(self) -> dict[str, list[float | None]]:
        return dict(self._quiet)

    async def forget_quiet(self, keys: list[str]) -> None:
        for key in keys if isinstance(keys, list) else []:
            self._quiet.pop(key, None)

    async def set_parked(self, credential: str, app: str, names: list[str]) -> int:
        """Publish which functions of `app` are out of Serve: callers bring one back (the parker's
        `unpark`) before calling it. Admin only: a parked function answers slower."""
        self._check_admin(credential)
        if not isinstance(app, str) or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("set_parked takes an app name and a list of function names")
        if sorted(names) == self._parked.get(app, []):
            return self.generation
        if names:
            self._parked[app] = sorted(names)
        else:
            self._parked.pop(app, None)
        return self._bump()

    async def parked(self) -> dict[str, list[str]]:
        return dict(self._parked)

    # --- app-warm workers (deployments/node/app_pool.py reports, the parker reads) ---------------
    async def report_app_workers(self, credential: str, held: list[str]) -> int:
        """A node's warm pool: the app units (keys `app/unit/digest16`) an idle worker of it holds
        now. Admin only: which runtime env a deployment takes follows it. Returns how many taken."""
        self._check_admin(credential)
        if not isinstance(held, list) or len(held) > constants.MAX_REPORTED_APP_UNITS:
            raise ValueError(f"report_app_workers takes a list of at most {constants.MAX_REPORTED_APP_UNITS} unit keys")
        now = time.time()
        keys = [k for k in held if isinstance(k, str) and k.count("/") == 2 and len(k) <= 512]
        self._held_units.update(dict.fromkeys(keys, now))
        for key, at in list(self._held_units.items()):
            if now - at > constants.HELD_UNIT_MEMORY_S:
                del self._held_units[key]
        return len(keys)

    async def held_app_units(self) -> dict[str, float]:
        """Unit key -> when a node last reported a worker holding it."""
        return dict(self._held_units)

    async def save_policy_state(self, app: str, function: str, state: dict[str, Any]) -> None:
        self.db.save_policy_state(app, function, state)

    async def load_policy_state(self, app: str, function: str) -> dict[str, Any] | None:
        return self.db.load_policy_state(app, function)

    async def record_scale_events(self, events: list[tuple[str, str, float, int, int]]) -> None:
        self.db.record_scale_events(events)

    async def scale_events(self, app: str, function: str, since: float = 0.0) -> list[dict[str, Any]]:
        return self.db.scale_events(app, function, since)

    async def last_scale_event(self, app: str, function: str) -> dict[str, Any] | None:
        return self.db.last_scale_event(app, function)

    async def set_weights(
        self,
        credential: str,
        app: str,
        function: str,
        model: str,
        path: str,
        fingerprint: str,
        source: str,
        only_if_changed: bool = False,
    ) -> int:
        self._check_admin(credential)
        version = self.db.set_weights(app, function, model, path, fingerprint, source, only_if_changed)
        self._weights_changed.set()
        self._weights_changed = asyncio.Event()
        return version

    async def current_weights(
        self, app: str, function: str, known: dict[str, int] | None = None, wait_s: float = 0.0
    ) -> dict[str, dict[str, Any]]:
        """The latest weights per model; with `known` ({model: version}), wait up to `wait_s` for a change."""
        deadline = time.monotonic() + wait_s
        while True:
            current = self.db.current_weights(app, function)
            if known is None or {m: w["version"] for m, w in current.items()} != known:
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return current
            try:
                await asyncio.wait_for(self._weights_changed.wait(), remaining)
            except TimeoutError:
                return self.db.current_weights(app, function)

    async def set_setting(self, credential: str, key: str, value: Any) -> None:
        self._check_admin(credential)
        self.db.set_setting(key, value)

    async def get_setting(self, key: str, default: Any = None) -> Any:
        """A cluster setting; the secret ones (SECRET_SETTINGS) only through their own admin calls."""
        if key in SECRET_SETTINGS:
            raise PermissionError(f"the setting {key!r} is a secret: read it with the admin credential")
        return self.db.get_setting(key, default)

    async def app_incarnation(self, app: str) -> int | None:
        """How many times `app` was deployed again after a delete (what its webhook secret derives from)."""
        return self.db.incarnation(app) if isinstance(app, str) else None


# Settings only their own admin-checked calls read (webhook_signing_key).
SECRET_SETTINGS = frozenset({"webhook_signing_key"})


def start_store(db_path: str, admin_hash: str, internal_hash: str | None = None) -> Any:
    """Create the detached store actor on the head node, or return the running one."""
    handle = start_head_actor(
        ControlPlaneStore,
        constants.STORE_ACTOR_NAME,
        db_path,
        admin_hash,
        internal_hash,
        max_concurrency=1000,
        retry_tasks=True,
    )
    ray.get(handle.ping.remote())
    return handle


def get_store() -> Any:
    """The running store actor; raises ValueError when it does not exist."""
    return ray.get_actor(constants.STORE_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)
