"""The shipped examples, deployed and called as a new user would."""

import math

import pytest


def test_hello_example(cluster, examples):
    assert examples["hello"]["routes"] == ["/hello/greet"]
    assert cluster.post("/hello/greet", {"name": "ray", "excited": True}).json() == "hello ray!"


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.mark.slow
def test_embeddings_example_ranks_a_paraphrase_above_an_unrelated_sentence(cluster, examples):
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    r = cluster.post("/embeddings/Embedder/embed", {"sentences": sentences}, timeout=300)
    assert r.status_code == 200, r.text
    vectors = r.json()
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-3
    paraphrase, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
    assert paraphrase > 0.6 and unrelated < 0.3 and paraphrase > unrelated + 0.3
    status = cluster.status("embeddings")
    assert status.functions[0].gpu == "1x GPU"
