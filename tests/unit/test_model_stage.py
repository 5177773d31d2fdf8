"""Model directories staged once per node (deployments/engines/model_stage.py): what is copied, what
linked, once under concurrency, within the budget, and cleared with the node."""

import multiprocessing
import os
from collections import namedtuple
from pathlib import Path

import pytest

from deployments.engines import model_stage
from deployments.engines.model_stage import clear, clear_all, model_files, stage, staged_models, staged_path


def make_model(directory: Path, weights: dict[str, bytes] | None = None, extra: dict[str, bytes] | None = None) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "tokenizer.json").write_text("{}")
    for name, data in (weights or {"model.safetensors": b"w" * 4096}).items():
        (directory / name).write_bytes(data)
    for name, data in (extra or {}).items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    return directory


def test_weight_files_are_the_ones_the_engine_loads(tmp_path):
    model = make_model(
        tmp_path / "m",
        {"model-00001-of-00002.safetensors": b"a" * 10, "model-00002-of-00002.safetensors": b"b" * 20},
        {"pytorch_model.bin": b"c" * 99, "original/consolidated.00.pth": b"d" * 50},
    )
    files = model_files(str(model))
    assert files.weights == ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    assert files.weight_bytes == 30
    only_bin = make_model(tmp_path / "b", {"pytorch_model.bin": b"c" * 7})
    assert model_files(str(only_bin)).weights == ("pytorch_model.bin",)


def test_hub_ids_files_and_directories_without_weights_are_not_staged(tmp_path):
    assert model_files("meta-llama/Llama-3.1-8B") is None
    (tmp_path / "file.safetensors").write_bytes(b"x")
    assert model_files(str(tmp_path / "file.safetensors")) is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert model_files(str(tmp_path / "empty")) is None
    assert stage("meta-llama/Llama-3.1-8B", tmp_path / "stage") is None


def test_the_fingerprint_follows_the_content(tmp_path):
    model = make_model(tmp_path / "m")
    before = model_files(str(model)).fingerprint
    assert model_files(str(model)).fingerprint == before
    (model / "model.safetensors").write_bytes(b"new weights")
    assert model_files(str(model)).fingerprint != before


def test_staging_copies_weights_and_links_the_rest(tmp_path):
    model = make_model(tmp_path / "m", extra={"original/params.json": b"{}"})
    root = tmp_path / "stage"
    assert staged_path(str(model), root) is None
    staged = stage(str(model), root)
    assert staged is not None and staged.parent == root
    weights = staged / "model.safetensors"
    assert not weights.is_symlink() and weights.read_bytes() == (model / "model.safetensors").read_bytes()
    assert (staged / "config.json").is_symlink() and (staged / "config.json").resolve() == model / "config.json"
    assert (staged / "original").is_symlink()
    assert staged_path(str(model), root) == staged
    copied_at = weights.stat().st_mtime_ns
    assert stage(str(model), root) == staged and weights.stat().st_mtime_ns == copied_at  # not copied again


def test_changed_weights_stage_again(tmp_path):
    model = make_model(tmp_path / "m")
    root = tmp_path / "stage"
    first = stage(str(model), root)
    (model / "model.safetensors").write_bytes(b"retrained" * 100)
    assert staged_path(str(model), root) is None
    second = stage(str(model), root)
    assert second != first and (second / "model.safetensors").read_bytes() == b"retrained" * 100


def _stage_in_process(args):
    model, root = args
    return str(stage(model, Path(root)))


def test_concurrent_replicas_on_a_node_stage_a_model_once(tmp_path):
    model = make_model(tmp_path / "m", {"model.safetensors": os.urandom(8 << 20)})
    root = tmp_path / "stage"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map(_stage_in_process, [(str(model), str(root))] * 4)
    assert len(set(paths)) == 1
    assert [p.name for p in root.iterdir() if p.is_dir()] == [Path(paths[0]).name]


def test_a_staging_that_died_is_cleaned_up(tmp_path):
    model = make_model(tmp_path / "m")
    root = tmp_path / "stage"
    root.mkdir()
    fingerprint = model_files(str(model)).fingerprint
    (root / f"{fingerprint}.partial-99999").mkdir()
    (root / f"{fingerprint}.partial-99999" / "model.safetensors").write_bytes(b"half")
    assert staged_path(str(model), root) is None
    staged = stage(str(model), root)
    assert staged.name == fingerprint and not list(root.glob("*.partial-*"))


Usage = namedtuple("Usage", "total used free")


def test_least_recently_used_models_leave_to_make_room(tmp_path, monkeypatch):
    root = tmp_path / "stage"
    old = make_model(tmp_path / "old", {"model.safetensors": b"o" * 3000})
    recent = make_model(tmp_path / "recent", {"model.safetensors": b"r" * 3000})
    new = make_model(tmp_path / "new", {"model.safetensors": b"n" * 3000})
    # a filesystem of 14 kB: staged models may use 7 kB of it, two of these at once
    monkeypatch.setattr(model_stage.shutil, "disk_usage", lambda _: Usage(14_000, 0, 14_000))
    old_staged = stage(str(old), root)
    recent_staged = stage(str(recent), root)
    os.utime(old_staged, (1, 1))  # used long ago
    assert stage(str(new), root) is not None
    assert not old_staged.exists() and recent_staged.exists()
    assert {p.name for p, _, _ in staged_models(root)} == {recent_staged.name, model_files(str(new)).fingerprint}


def test_a_model_larger_than_the_budget_is_loaded_from_its_source(tmp_path, monkeypatch):
    root = tmp_path / "stage"
    big = make_model(tmp_path / "big", {"model.safetensors": b"b" * 8000})
    monkeypatch.setattr(model_stage.shutil, "disk_usage", lambda _: Usage(14_000, 0, 14_000))
    assert stage(str(big), root) is None and staged_path(str(big), root) is None


def test_a_full_filesystem_refuses_staging(tmp_path, monkeypatch):
    root = tmp_path / "stage"
    model = make_model(tmp_path / "m", {"model.safetensors": b"m" * 1000})
    monkeypatch.setattr(model_stage.shutil, "disk_usage", lambda _: Usage(100_000, 95_000, 5_000))
    assert stage(str(model), root) is None


def test_staging_is_off_when_configured_so(tmp_path, monkeypatch):
    model = make_model(tmp_path / "m")
    monkeypatch.setenv(model_stage.STAGE_DIR_ENV, "off")
    assert model_stage.stage_root() is None and stage(str(model)) is None and staged_path(str(model)) is None
    monkeypatch.setenv(model_stage.STAGE_DIR_ENV, str(tmp_path / "configured"))
    assert stage(str(model)).parent == tmp_path / "configured"


def test_clear_removes_one_model_and_clear_all_every_one(tmp_path):
    root = tmp_path / "stage"
    first = make_model(tmp_path / "a")
    second = make_model(tmp_path / "b", {"model.safetensors": b"other"})
    stage(str(first), root)
    stage(str(second), root)
    assert clear(str(first), root) and not clear(str(first), root)
    assert staged_path(str(first), root) is None and staged_path(str(second), root) is not None
    assert clear_all(root) == 1 and not root.exists()
    assert clear_all(root) == 0


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this machine")
def test_the_default_root_is_node_memory(monkeypatch):
    monkeypatch.delenv(model_stage.STAGE_DIR_ENV, raising=False)
    assert model_stage.stage_root() == Path("/dev/shm/raygpu-models")


def test_the_budget_counts_what_other_models_are_staging_now(tmp_path, monkeypatch):
    root = tmp_path / "stage"
    root.mkdir()
    other = make_model(tmp_path / "other", {"model.safetensors": b"o" * 3000})
    monkeypatch.setattr(model_stage.shutil, "disk_usage", lambda _: Usage(14_000, 0, 14_000))
    staging = "f" * 24
    with model_stage._locked(root, staging):  # another replica is staging 6 kB of a model right now
        (root / f"{staging}{model_stage.RESERVATION_SUFFIX}").write_text("6000")
        assert stage(str(other), root) is None  # 6 kB + 3 kB would pass the 7 kB budget
    # that staging died without finishing: its reservation no longer counts
    staged = stage(str(other), root)
    assert staged is not None and not list(root.glob(f"*{model_stage.RESERVATION_SUFFIX}"))


def test_a_copy_no_replica_holds_or_used_for_a_while_leaves_node_memory(tmp_path):
    import time

    from deployments.engines.model_stage import hold, release, remove_idle

    root = tmp_path / "stage"
    staged = stage(str(make_model(tmp_path / "m")), root)
    later = time.time() + 3600
    use = hold(staged)
    assert remove_idle(root, idle_s=60, now=later) == [] and staged.exists()  # a replica runs on it
    release(use, staged)
    assert remove_idle(root, idle_s=60) == [] and staged.exists()  # used just now
    assert remove_idle(root, idle_s=60, now=later) == [staged.name] and not staged.exists()
    assert clear_all(root) == 0 and not root.exists()  # the use and lock files go with the node
