"""Functions on GPU types only the fake node pools of the test cluster have (A10G, L4)."""

import os

import raygpu

app = raygpu.App("pools")


def where() -> dict:
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


@app.function(gpu="A10G", scaledown_window=3)
def on_a10g(x: int = 0) -> dict:
    return {"x": x, **where()}


@app.function(gpu="L4", scaledown_window=3)
def on_l4(x: int = 0) -> dict:
    return {"x": x, **where()}


# Its first replica must outlive the wait for the launched node's warm pool (up to 90 s under load).
@app.function(gpu="L4", max_inputs=1, scaledown_window=180)
def l4_slow(seconds: float = 0.0) -> dict:
    import time

    time.sleep(seconds)
    return where()
