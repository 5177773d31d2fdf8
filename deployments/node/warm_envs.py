"""The runtime envs of warm workers and of the replicas that may take them (Ray hands an idle worker
only to an actor with an identical runtime env), the pool sizes per flavour, and how a replica tells
whether it landed on a warm worker. No Ray."""

from __future__ import annotations

import os
from typing import Any

from deployments.node.app_workers import APP_FLAVOUR, WARM_UNIT_ENV

WARM_ENV_VAR = "RAYGPU_WARM_WORKER"
FLAVOURS = ("torch", "vllm")
PRELOAD_MODULE = "deployments.node.warm_preload"
MAX_WORKERS_PER_FLAVOUR = 64


def flavour_runtime_env(flavour: str) -> dict[str, Any]:
    """The runtime env of a flavour's warm workers and of the replicas that may take them: Ray
    reuses a worker only for an identical runtime env (and the same job)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown warm-pool flavour {flavour!r}; flavours: {', '.join(FLAVOURS)}")
    return {"env_vars": {WARM_ENV_VAR: flavour}}


def app_runtime_env(key: str) -> dict[str, Any]:
    """The runtime env of the warm workers that hold one app unit (`key`: app/unit/code digest) and
    of that unit's replicas."""
    return {"env_vars": {WARM_ENV_VAR: APP_FLAVOUR, WARM_UNIT_ENV: key}}


def runtime_env_for(
    image_runtime_env: dict[str, Any], flavour: str = "torch", unit: str | None = None
) -> dict[str, Any]:
    """The runtime env a replica gets: the image's own when it installs pip packages (a different
    environment, which no warm worker has), else that of the warm workers holding its app unit
    (`unit`, for units that get them), else its flavour's warm one. Environment variables alone do
    not need another environment: the replica sets them itself before it loads anything
    (`apply_image_env`), so such a replica still lands on a warm worker."""
    if image_runtime_env.get("pip"):
        return dict(image_runtime_env)
    if unit is not None:
        return app_runtime_env(unit)
    return flavour_runtime_env(flavour)


def apply_image_env(env: dict[str, str]) -> None:
    """Set an image's environment variables in this replica process (before its code and engine
    load), as Ray would have set them in a runtime env of their own."""
    os.environ.update({str(k): str(v) for k, v in env.items()})


def parse_pool_sizes(text: str | int | dict[str, int]) -> dict[str, int]:
    """Warm workers per flavour: "torch=1,vllm=1", a plain count (torch workers), or a mapping."""
    if isinstance(text, dict):
        items = list(text.items())
    elif isinstance(text, int) and not isinstance(text, bool):
        items = [("torch", text)]
    else:
        raw = str(text).strip()
        if raw.isdigit():
            items = [("torch", int(raw))]
        else:
            items = []
            for part in filter(None, (p.strip() for p in raw.split(","))):
                name, sep, count = part.partition("=")
                if not sep or not count.strip().isdigit():
                    raise ValueError(f"warm pool {text!r}: write FLAVOUR=COUNT[,FLAVOUR=COUNT], e.g. torch=1,vllm=1")
                items.append((name.strip(), int(count.strip())))
    sizes: dict[str, int] = {}
    for name, count in items:
        if name not in FLAVOURS:
            raise ValueError(f"warm pool: unknown flavour {name!r}; flavours: {', '.join(FLAVOURS)}")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_WORKERS_PER_FLAVOUR:
            raise ValueError(f"warm pool: {name}={count!r} must be a count from 0 to {MAX_WORKERS_PER_FLAVOUR}")
        sizes[name] = count
    return sizes


def landed_warm(replica_init: float) -> bool:
    """Whether this replica runs in a warm worker (its imports done before it was assigned; for a
    worker that holds an app, one that was idle in the pool: it may still be running the app's
    `snap=True` hooks, which the replica waits for as its `adopted` phase)."""
    import sys

    preload = sys.modules.get(PRELOAD_MODULE)
    if os.environ.get(WARM_ENV_VAR) == APP_FLAVOUR:
        pooled_at = getattr(preload, "POOLED_AT", None)
        return pooled_at is not None and pooled_at < replica_init
    preloaded_at = getattr(preload, "PRELOADED_AT", None)
    return preloaded_at is not None and preloaded_at < replica_init and os.environ.get(WARM_ENV_VAR) in FLAVOURS
