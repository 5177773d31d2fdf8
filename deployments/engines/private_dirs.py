"""Directories raygpu keeps node-local files in (staged model weights, weight blobs, warm-worker
markers, the CPU capability cache): made 0700, and refused when another user owns one, so other
users of a node can neither read what is in them nor plant files raygpu would trust. No Ray."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SharedDirectoryError(OSError):
    """A directory raygpu would use belongs to another user, or is not a plain directory."""


def private_dir(path: str | Path) -> Path:
    """`path` as a directory only this user can enter (created 0700 when missing, tightened when
    ours and looser); SharedDirectoryError when it is a link, not a directory, or another user's."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise SharedDirectoryError(f"{path} is not a plain directory; raygpu keeps its node-local files only in one")
    if info.st_uid != os.getuid():
        raise SharedDirectoryError(
            f"{path} belongs to another user (uid {info.st_uid}); raygpu keeps its node-local files only in "
            "directories it owns: remove it, or point raygpu at another directory"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path
