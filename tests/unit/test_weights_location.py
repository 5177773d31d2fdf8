"""Weights locations: content-addressed blobs uploaded from the deployer, or file:// on shared storage."""

import hashlib

import pytest

from deployments.node.weight_cache import fingerprint
from deployments.weights_location import blob_name, is_location, parse_location


def test_a_blob_is_named_by_its_bytes_and_keeps_its_suffix(tmp_path):
    first = tmp_path / "a.safetensors"
    first.write_bytes(b"weights" * 1000)
    copy = tmp_path / "elsewhere" / "b.safetensors"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    name = blob_name(first)
    assert name == hashlib.sha256(first.read_bytes()).hexdigest() + ".safetensors"
    assert blob_name(copy) == name  # same bytes, same address: nothing to upload again
    first.write_bytes(b"other")
    assert blob_name(first) != name


def test_locations_parse_and_bad_ones_are_refused():
    blob = parse_location("raygpu-blob://" + "a" * 64 + ".pt")
    assert (blob.kind, blob.sha256, blob.uri) == ("blob", "a" * 64, "raygpu-blob://" + "a" * 64 + ".pt")
    shared = parse_location("file:///mnt/models/ranker.safetensors")
    assert (shared.kind, shared.path) == ("file", "/mnt/models/ranker.safetensors")
    for bad in ("raygpu-blob://xyz", "raygpu-blob://" + "a" * 63, "file://relative/path", "s3://bucket/key"):
        with pytest.raises(ValueError):
            parse_location(bad)
    assert is_location("file:///x") and not is_location("/plain/path")


def test_cache_keys_follow_content_for_blobs_and_the_file_for_shared_paths(tmp_path):
    uri = "raygpu-blob://" + "b" * 64 + ".safetensors"
    assert fingerprint(uri) == uri
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"1")
    assert fingerprint(f"file://{weights}").startswith(str(weights))
    assert fingerprint("file:///not/mounted/here.pt") == "file:///not/mounted/here.pt"
