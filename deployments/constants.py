"""The names and defaults that more than one module of raygpu shares (actor names, spec defaults,
gateway limits, timings), each explained; changing one here changes it everywhere. A tuning value
that only one module uses is named and explained at the top of that module instead.
"""

from __future__ import annotations

import os
import tempfile

# --- Ray namespace and named actors -------------------------------------------------------
RAY_NAMESPACE = "raygpu"
STORE_ACTOR_NAME = "raygpu-control-plane-store"

# --- Serve applications --------------------------------------------------------------------
GATEWAY_APP_NAME = "raygpu-gateway"
GATEWAY_DEPLOYMENT_NAME = "Gateway"
# Each user app becomes the Serve application f"{USER_APP_PREFIX}{app}" with no HTTP route.
USER_APP_PREFIX = "raygpu-app-"

DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
# The meter's Prometheus exporter (/metrics) on the head node.
DEFAULT_METRICS_PORT = 9478

# --- Function spec defaults (Modal's defaults where they exist) -----------------------------
DEFAULT_CPU = 0.25  # logical cores per replica
DEFAULT_MAX_CONTAINERS = 10
DEFAULT_SCALEDOWN_WINDOW_S = 60.0  # Modal's default idle window
DEFAULT_TIMEOUT_S = 300.0  # Modal's default per-call timeout
DEFAULT_MAX_INPUTS = 1  # concurrent requests per replica, as on Modal
DEFAULT_MAX_QUEUE = 100  # queued requests per function beyond which callers get 503
MAX_SCALEDOWN_WINDOW_S = 24 * 3600.0
MAX_TIMEOUT_S = 24 * 3600.0
MAX_RETRIES = 10

# Names that would clash with gateway routes or internal routes.
# Gateway routes under an app (`/{app}/calls/{id}`) and a unit (`/{app}/{fn}/spawn`).
CALLS_ROUTE = "calls"
SPAWN_ROUTE = "spawn"
RESERVED_FUNCTION_NAMES = frozenset({"docs", CALLS_ROUTE, SPAWN_ROUTE, "v1"})
RESERVED_APP_NAMES = frozenset({"healthz", "docs", "calls", "spawn", "v1", "metrics"})
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"

# Accelerator types raygpu knows; a cluster labels its GPU nodes with one of these.
KNOWN_GPU_TYPES = (
    "T4",
    "L4",
    "A10G",
    "A10",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "L40S",
    "H100",
    "H200",
    "B200",
    "GB200",
    "V100",
    "MI300X",
)

MAX_GRACEFUL_SHUTDOWN_S = 600.0  # a replica being removed gets this long to finish in-flight calls

# --- Gateway --------------------------------------------------------------------------------
MAX_BODY_BYTES = 16 * 1024 * 1024  # 413 beyond this
# An oversized body is read and discarded up to this much before the 413 goes out, so clients that
# send the whole body before reading the answer (requests, urllib) see the 413, not a reset.
MAX_DRAIN_BYTES = 128 * 1024 * 1024
GATEWAY_MAX_CONNECTIONS = 4096  # open connections per gateway replica; more are answered 503 and closed
HEADER_TIMEOUT_S = 10.0  # a connection that has not sent a request's headers within this is closed
BODY_TIMEOUT_S = 30.0  # a body not fully received within this answers 408
KEEP_ALIVE_TIMEOUT_S = 60.0  # an idle keep-alive connection is closed after this
# A replica whose sync call passed its timeout (its worker thread is still busy) takes no more calls
# and fails its health check so Serve replaces it; it answers new calls 503 with this header and
# the gateway sends them again after DRAINING_RETRY_S.
DRAINING_HEADER = "x-raygpu-draining"
DRAINING_RETRY_S = 0.2
REPLICA_HEALTH_CHECK_PERIOD_S = 1.0  # Serve replaces a replica after 3 failed checks in a row
MAX_PENDING_ARRIVALS = 100_000  # arrivals a gateway replica buffers while the store is away; older ones drop
# A custom resource every non-head node of a raygpu cluster declares (cluster.yaml); user replicas
# ask for a sliver of it whenever the cluster has it, so they never land on the head node.
WORKER_RESOURCE = "raygpu_worker"
WORKER_RESOURCE_SLIVER = 0.001
# After the gateway serves a new version, the old one is deleted this much later (calls routed to
# it just before the switch still land on running replicas, which finish them).
RETIRE_DELAY_S = 0.5
RETRY_AFTER_S = 1  # Retry-After of a 503 while a function's queue is full
# A call to a function idle this long goes to the store at once (it may be at zero replicas).
IMMEDIATE_ARRIVAL_AFTER_IDLE_S = 1.0
ARRIVAL_FLUSH_INTERVAL_S = 0.2  # how often a gateway replica ships recorded arrivals to the store
CONFIG_POLL_TIMEOUT_S = 30.0  # long-poll timeout for routing-table changes
GATEWAY_TARGET_INFLIGHT = 200.0  # in-flight calls per gateway replica before another one starts
GATEWAY_MAX_REPLICAS = 4

# The admin credential's prefix (raygpu/sdk/admin.py makes it): the gateway asks the control plane
# about a bearer token as an admin credential only when it has this prefix.
ADMIN_KEY_PREFIX = "rga_"

# --- Control-plane store --------------------------------------------------------------------
RETENTION_INTERVAL_S = 3600.0  # how often the store deletes what is past retention (deployments/store/db.py)
RETENTION_BATCH_BUDGET_S = 0.05  # the longest one retention batch may hold the store's loop

# --- Parking: functions at rest leave Serve until wanted (deployments/parking.py) -------------
PARKER_ACTOR_NAME = "raygpu-parker"
# A function at zero this long, whose plan wants no replica within as long again, leaves Serve
# (cluster setting "park_after_s"; `raygpu up --park-after`; 0 keeps every function in Serve).
DEFAULT_PARK_AFTER_S = 600.0
PARK_CHECK_INTERVAL_S = 2.0  # how often the parker looks for functions to park or bring back
PARK_WAKE_LEAD_S = 20.0  # a parked function returns this long before its planned pre-warm
PARK_APP_GONE_WAIT_S = 30.0  # how long bringing one back waits for its emptied application to go
# Between publishing that functions are parked and taking them out of Serve: every gateway has seen
# the new routing table by then, and the calls it took before have recorded their arrival.
PARK_PUBLISH_GRACE_S = 0.5
# A handle whose deployment was parked and brought back answers "unavailable" until its router has
# Serve's news that it is back; calls are sent again for this long.
ROUTER_CATCH_UP_S = 10.0
MAX_QUIET_REPORTS = 100_000  # quiet reports taken per call

# --- Serve autoscaling knobs that make raygpu's idle window decide --------------------------
METRICS_INTERVAL_S = 0.5  # replica/handle metrics push; Serve's default 10 s delays cold starts
LOOK_BACK_PERIOD_S = 2.0
# Replica start time the live policy plans with (pre-warm lead, linger after the last call, load
# averaging). A local CPU replica starts in ~2 s; GPU replicas with model loads take far longer.
EXPECTED_START_TIME_S = 5.0

# --- Local cluster ----------------------------------------------------------------------------
DEFAULT_LOCAL_GPUS = 2
DEFAULT_LOCAL_ACCELERATOR = "H100"
# Logical CPUs declared on the local head so several replicas fit on a small machine.
DEFAULT_LOCAL_LOGICAL_CPUS = 16
READY_TIMEOUT_S = 120.0
# How long a token or app change waits for every gateway replica to pick up the new routing table.
GATEWAY_PICKUP_TIMEOUT_S = 30.0

# --- Gateway timeouts ------------------------------------------------------------------------
# Beyond the function's own timeout, how long the gateway waits for a replica to start before it
# answers 504: a function's `startup_timeout` (covers node provisioning, image setup, model loads).
# The default fits a cloud GPU node launch (a few minutes) plus a large model's load.
DEFAULT_STARTUP_TIMEOUT_S = 900.0
MAX_STARTUP_TIMEOUT_S = 4 * 3600.0

# --- model deployments ---------------------------------------------------------------------------
DEFAULT_MAX_MODELS = 2
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# Request headers the gateway passes on to replicas (the rest stay at the gateway).
FORWARDED_HEADER_PREFIX = "x-raygpu-"
MODEL_HEADER = "x-raygpu-model"
WEIGHTS_VERSION_HEADER = "x-raygpu-weights-version"
# How long a replica's weight watch waits on the store per call.
WEIGHTS_POLL_TIMEOUT_S = 10.0
WEIGHT_CACHE_VERSIONS_KEPT = 2  # a node's cache keeps each model's current and previous weights
WEIGHT_CACHE_ACTOR_PREFIX = "raygpu-weights-"
WARM_POOL_ACTOR_PREFIX = "raygpu-warm-pool-"
# One empty file per warm worker whose preload finished, named by pid: the pool hands out only those.
WARM_READY_DIR = os.path.join(tempfile.gettempdir(), "raygpu-warm-workers")
# Node-private: the code of the units whose warm workers hold their app (deployments/node/app_workers.py).
MAX_REPORTED_APP_UNITS = 10_000  # app units one node's pool reports holding at once
HELD_UNIT_MEMORY_S = 3600.0  # the store forgets a unit no node reported holding for this long
WARM_APPS_DIR = os.path.join(tempfile.gettempdir(), "raygpu-warm-apps")
# Idle warm workers kept per GPU node (each ~300-400 MB of RAM: a Python process with torch imported).
DEFAULT_WARM_POOL_SIZE = 1
# Serve's control loop period; shorter reacts faster to a call at zero replicas, at a few % of a core.
DEFAULT_CONTROL_LOOP_INTERVAL_S = 0.05

# `raygpu up --local --fake-nodes`: how long an idle fake GPU node lives before the autoscaler removes it.
DEFAULT_FAKE_NODE_IDLE_TIMEOUT_S = 60.0
# How often the control-plane driver looks for nodes that joined (to start their warm pools).
NODE_WATCH_INTERVAL_S = 3.0
# The weight blob store (an actor on the head over the state dir's weights/) and each node's copies.
WEIGHT_BLOBS_ACTOR_NAME = "raygpu-weight-blobs"
NODE_BLOB_DIR = "/tmp/raygpu-weight-blobs"
# The control plane over HTTP: the gateway forwards POST /_raygpu/admin/{operation} to this actor.
ADMIN_API_ACTOR_NAME = "raygpu-admin-api"
ADMIN_ROUTE = "_raygpu"
