"""The control plane's actors on the head node: named, detached (they outlive the driver that
started them), restarted by Ray when they die, and found again rather than duplicated."""

from __future__ import annotations

from typing import Any

import ray

from deployments import constants


def start_head_actor(actor_class: type, name: str, *args: Any, max_concurrency: int, retry_tasks: bool = False) -> Any:
    """The running actor `name`, or a new one of `actor_class(*args)` on the head node.
    `retry_tasks`: calls in flight when it died are sent again to the restarted actor (only for
    actors whose methods may run twice)."""
    options: dict[str, Any] = {
        "name": name,
        "namespace": constants.RAY_NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "num_cpus": 0,
        "max_restarts": -1,
        "max_concurrency": max_concurrency,
        "resources": {"node:__internal_head__": 0.001},
    }
    if retry_tasks:
        options["max_task_retries"] = -1
    return ray.remote(actor_class).options(**options).remote(*args)
