"""Model directories staged once per node: the weight files an engine loads are copied into node memory
(tmpfs, `/dev/shm` by default) the first time a replica on the node starts from them, and later
replicas on the node load from there, never from the model's own storage again (a network mount, a
disk whose page cache other models evicted).

A staged model is a directory beside the others under the stage root, named by the model's content
fingerprint (every file's path, size and modification time): its weight files are copies, every other
entry (config, tokenizer, index files) a symlink to the source. Staging is serialised per model by a
file lock, so concurrent replicas on a node copy it once; the staged entries together stay within a
share of the root's filesystem, the least recently used leaving first, checked across models under one
budget lock (a staging under way reserves its bytes). A replica holds a shared "use" lock on the copy
it loaded from while it runs; a copy that no replica holds and none has used for STAGE_IDLE_S is
removed by the node's sweep (`remove_idle`). No Ray: the replica passes the staged path to its engine
as it would the model's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from deployments.engines.private_dirs import private_dir

logger = logging.getLogger(__name__)
STAGE_DIR_ENV = "RAYGPU_MODEL_STAGE_DIR"  # where staged models live ("off" disables staging)
DEFAULT_STAGE_DIR = "/dev/shm/raygpu-models"
# Staged models together use at most this share of the stage root's filesystem, and staging leaves
# at least the free share below (tmpfs is RAM; Ray's object store and the engines need it too).
MAX_STAGED_FRACTION = 0.5
MIN_FREE_FRACTION = 0.1
# The files an engine loads weights from, in the order vLLM prefers them: safetensors when a model
# has them (the others are then never read), else PyTorch checkpoints.
WEIGHT_SUFFIX_PREFERENCE = ((".safetensors",), (".bin", ".pt", ".pth"))
PARTIAL_MARK = ".partial-"
# A staged copy that no replica on the node holds and none has used for this long leaves node memory.
STAGE_IDLE_S = 1800.0
BUDGET_LOCK = "budget"  # one lock over the stage root's space budget (fingerprints are hex)
RESERVATION_SUFFIX = ".reserve"  # bytes a staging under way will take, beside its fingerprint
USE_SUFFIX = ".use"  # the lock replicas hold shared while they run on a staged copy


@dataclass(frozen=True)
class ModelFiles:
    """What staging a model directory copies: its weight files (paths relative to the directory)."""

    source: Path
    fingerprint: str
    weights: tuple[str, ...]
    weight_bytes: int


def stage_root() -> Path | None:
    """The node's stage root, or None when staging is off (`RAYGPU_MODEL_STAGE_DIR=off`)."""
    configured = os.environ.get(STAGE_DIR_ENV, "").strip()
    if configured.lower() in ("off", "0", "none"):
        return None
    if configured:
        return Path(configured)
    return Path(DEFAULT_STAGE_DIR) if Path(DEFAULT_STAGE_DIR).parent.is_dir() else None


def model_files(model: str) -> ModelFiles | None:
    """The weight files of a local model directory; None for anything else (a hub id, a file)."""
    source = Path(model).expanduser()
    if not source.is_dir():
        return None
    source = source.resolve()
    entries = []
    for path in sorted(source.rglob("*")):
        if path.is_file():
            stat = path.stat()
            entries.append((path.relative_to(source).as_posix(), stat.st_size, stat.st_mtime_ns))
    if not entries:
        return None
    weights: list[tuple[str, int]] = []
    for suffixes in WEIGHT_SUFFIX_PREFERENCE:
        weights = [(rel, size) for rel, size, _ in entries if rel.endswith(suffixes) and "/" not in rel]
        if weights:
            break
    if not weights:
        return None
    digest = hashlib.sha256(str(source).encode())
    for rel, size, mtime_ns in entries:
        digest.update(f"\0{rel}\0{size}\0{mtime_ns}".encode())
    return ModelFiles(
        source=source,
        fingerprint=digest.hexdigest()[:24],
        weights=tuple(rel for rel, _ in weights),
        weight_bytes=sum(size for _, size in weights),
    )


def staged_path(model: str, root: Path | None = None) -> Path | None:
    """The staged copy of `model` on this node if there is one (marked as just used), else None."""
    root = root if root is not None else stage_root()
    files = model_files(model) if root is not None else None
    if files is None:
        return None
    path = root / files.fingerprint
    if not path.is_dir():
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return path


def stage(model: str, root: Path | None = None) -> Path | None:
    """Stage `model` on this node (once: a concurrent caller waits for the first and gets its copy);
    its staged path, or None when it is not a local model directory or does not fit."""
    root = root if root is not None else stage_root()
    files = model_files(model) if root is not None else None
    if root is None or files is None:
        return None
    try:
        private_dir(root)
    except OSError as exc:
        logger.warning("raygpu: not staging %s (%s); it loads from its source", model, exc)
        return None
    target = root / files.fingerprint
    with _locked(root, files.fingerprint):
        if target.is_dir():
            os.utime(target)
            return target
        for partial in root.glob(f"{files.fingerprint}{PARTIAL_MARK}*"):
            shutil.rmtree(partial, ignore_errors=True)  # a staging that died (we hold its lock)
        if not _make_room(root, files.weight_bytes, keep=files.fingerprint):
            return None
        partial = root / f"{files.fingerprint}{PARTIAL_MARK}{os.getpid()}"
        try:
            _build(files, partial)
            partial.rename(target)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            return None
        finally:
            (root / f"{files.fingerprint}{RESERVATION_SUFFIX}").unlink(missing_ok=True)
    return target


def _build(files: ModelFiles, into: Path) -> None:
    """Weight files copied, everything else linked to the source."""
    into.mkdir(mode=0o700)
    weights = set(files.weights)
    for entry in sorted(files.source.iterdir()):
        if entry.name in weights:
            shutil.copyfile(entry, into / entry.name)
            os.chmod(into / entry.name, 0o600)  # staged weights are this user's alone
        else:
            (into / entry.name).symlink_to(entry)


def staged_models(root: Path) -> list[tuple[Path, int, float]]:
    """(path, bytes, last used) of each staged model under `root`, least recently used first."""
    found = []
    if not root.is_dir():
        return found
    for path in root.iterdir():
        if not path.is_dir() or path.is_symlink() or PARTIAL_MARK in path.name:
            continue
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file() and not f.is_symlink())
        found.append((path, size, path.stat().st_mtime))
    return sorted(found, key=lambda item: item[2])


def _reserved(root: Path, keep: str) -> int:
    """Bytes that stagings under way (other than `keep`'s) have reserved; a reservation whose staging
    died (nobody holds its model's lock) is dropped."""
    total = 0
    for mark in root.glob(f"*{RESERVATION_SUFFIX}"):
        fingerprint = mark.name.removesuffix(RESERVATION_SUFFIX)
        if fingerprint == keep:
            continue
        with _locked(root, fingerprint, wait=False) as nobody_staging:
            if nobody_staging:
                mark.unlink(missing_ok=True)
                continue
        with contextlib.suppress(OSError, ValueError):
            total += int(mark.read_text())
    return total


def _make_room(root: Path, needed: int, keep: str) -> bool:
    """Under the budget lock: remove least recently used staged models (not being staged) until
    `needed` more bytes fit beside the staged ones and the reservations of stagings under way, and
    reserve them for `keep`."""
    with _locked(root, BUDGET_LOCK):
        usage = shutil.disk_usage(root)
        staged = staged_models(root)
        total = sum(size for _, size, _ in staged) + _reserved(root, keep)

        def fits() -> bool:
            free = shutil.disk_usage(root).free
            return (
                total + needed <= usage.total * MAX_STAGED_FRACTION and free - needed >= usage.total * MIN_FREE_FRACTION
            )

        if needed > usage.total * MAX_STAGED_FRACTION:
            return False
        for path, size, _ in staged:
            if fits():
                break
            if path.name == keep:
                continue
            with _locked(root, path.name, wait=False) as held:
                if held:
                    shutil.rmtree(path, ignore_errors=True)  # engines that mapped its files keep them until done
                    total -= size
        if not fits():
            return False
        (root / f"{keep}{RESERVATION_SUFFIX}").write_text(str(needed))
        return True


def hold(path: Path) -> IO[str] | None:
    """Mark the staged copy at `path` as in use by this process (a shared lock, released by
    `release` or when the process ends); None when it cannot be marked."""
    try:
        handle = open(path.parent / f"{path.name}{USE_SUFFIX}", "a+")  # noqa: SIM115 - held until release
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH)
    except OSError:
        handle.close()
        return None
    return handle


def release(handle: IO[str] | None, path: Path) -> None:
    """This process no longer uses the staged copy at `path`: it counts as used until now."""
    if handle is None:
        return
    with contextlib.suppress(OSError):
        os.utime(path)
    with contextlib.suppress(OSError):
        fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def remove_idle(root: Path | None = None, idle_s: float = STAGE_IDLE_S, now: float | None = None) -> list[str]:
    """Remove the staged copies that no replica holds and none has used for `idle_s` (nor is being
    staged); the fingerprints removed."""
    root = root if root is not None else stage_root()
    if root is None or not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - idle_s
    removed = []
    for path, _, used_at in staged_models(root):
        if used_at > cutoff:
            continue
        with open(root / f"{path.name}{USE_SUFFIX}", "a+") as use:
            try:
                fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a replica on this node runs on it
            try:
                with _locked(root, path.name, wait=False) as held:
                    if held and path.stat().st_mtime <= cutoff:
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(path.name)
            finally:
                fcntl.flock(use, fcntl.LOCK_UN)
    return removed


def clear(model: str, root: Path | None = None) -> bool:
    """Remove the staged copy of `model` from this node; whether there was one."""
    root = root if root is not None else stage_root()
    files = model_files(model) if root is not None else None
    if root is None or files is None or not (root / files.fingerprint).is_dir():
        return False
    with _locked(root, files.fingerprint):
        shutil.rmtree(root / files.fingerprint, ignore_errors=True)
    return True


def clear_all(root: Path | None = None) -> int:
    """Remove every staged model under the stage root (a node leaving); how many there were."""
    root = root if root is not None else stage_root()
    if root is None or not root.is_dir():
        return 0
    removed = 0
    for path in list(root.iterdir()):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed += PARTIAL_MARK not in path.name
        elif path.suffix in (".lock", RESERVATION_SUFFIX, USE_SUFFIX):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        root.rmdir()
    return removed


@contextlib.contextmanager
def _locked(root: Path, fingerprint: str, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on one model's staging (held: True; with `wait=False` False when taken)."""
    with open(root / f"{fingerprint}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
