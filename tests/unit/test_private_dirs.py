"""Node-local directories (staged weights, blobs, warm markers, the CPU capability cache): 0700,
tightened when ours and looser, refused when another user owns them or they are links."""

import os
import stat

import pytest

from deployments.engines.private_dirs import SharedDirectoryError, private_dir


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_directory_is_private_and_a_loose_one_of_ours_is_tightened(tmp_path):
    made = private_dir(tmp_path / "a" / "stage")
    assert made.is_dir() and mode(made) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    private_dir(loose)
    assert mode(loose) == 0o700


def test_a_link_or_a_file_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SharedDirectoryError, match="plain directory"):
        private_dir(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        private_dir(tmp_path / "file")


@pytest.mark.skipif(os.getuid() != 0, reason="making another user's directory needs root")
def test_another_users_directory_is_refused_and_staging_falls_back_to_the_source(tmp_path):
    from deployments.engines.model_stage import stage

    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(SharedDirectoryError, match="another user"):
        private_dir(theirs)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    assert stage(str(model), root=theirs) is None  # loads from its source instead
    mine = tmp_path / "mine"
    staged = stage(str(model), root=mine)
    assert staged is not None and mode(mine) == 0o700 and mode(staged / "model.safetensors") == 0o600
