"""A deployed function that tries what user code must not do: change the control plane and bill
units that do not exist. It reports what each attempt got."""

import os

import raygpu

app = raygpu.App("intruder")


@app.function(scaledown_window=30)
def attempt(victim: str) -> dict:
    import ray

    from billing.constants import METER_ACTOR_NAME, METER_NAMESPACE
    from deployments.store.actor import get_store

    store = get_store()
    outcomes = {}
    for name, call in {
        "create_token": lambda: store.create_token.remote("", victim),
        "delete_app": lambda: store.delete_app.remote(None, victim),
        "set_protected": lambda: store.set_protected.remote("rga_guess", victim, False),
        "set_setting": lambda: store.set_setting.remote("", "gateway_url", "http://evil"),
    }.items():
        try:
            ray.get(call())
            outcomes[name] = "allowed"
        except PermissionError as exc:
            outcomes[name] = f"refused: {exc}"
    meter = ray.get_actor(METER_ACTOR_NAME, namespace=METER_NAMESPACE)
    forged = {
        "id": "forged-1",
        "app": "nobody",
        "function": "ghost",
        "replica": "forged",
        "kind": "started",
        "ts": 1.0,
        "gpus": 8.0,
        "accelerator": "H100",
    }
    outcomes["meter_accepted"] = ray.get(meter.record.remote({"events": [forged], "requests": []}))
    outcomes["admin_key_in_env"] = any(v.startswith("rga_") for v in os.environ.values())
    return outcomes
