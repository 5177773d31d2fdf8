"""The cluster's weight blobs: files uploaded at deploy (or `raygpu weights push`), kept under the
state dir by content address, so unchanged weights upload nothing and every node fetches the same
bytes; each node keeps a local copy it checks against the address."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from deployments import constants
from deployments.engines.private_dirs import private_dir
from deployments.head_actors import start_head_actor
from deployments.weights_location import BLOB_NAME, WeightsLocation, blob_name

CHUNK_BYTES = 32 * 2**20


class WeightBlobs:
    """The blob store: one actor on the head, files in `directory`. Uploads need the admin credential."""

    def __init__(self, directory: str, check_admin: Any):
        self.directory = private_dir(directory)
        self._check_admin = check_admin

    def _path(self, name: str) -> Path:
        if not BLOB_NAME.match(name):
            raise ValueError(f"{name!r} is not a blob name (sha256 hex and a suffix)")
        return self.directory / name

    async def has(self, name: str) -> bool:
        return self._path(name).is_file()

    async def size(self, name: str) -> int:
        path = self._path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no weights blob {name} in the cluster's state; deploy or push the weights again")
        return path.stat().st_size

    async def put(self, credential: str, name: str, offset: int, data: bytes) -> int:
        """Write one chunk of an upload at `offset`; returns the bytes received so far."""
        await self._admin(credential)
        if not isinstance(data, bytes) or not isinstance(offset, int) or offset < 0:
            raise ValueError("a chunk is bytes at a non-negative offset")
        partial = self._path(name).with_suffix(self._path(name).suffix + ".part")
        mode = "r+b" if partial.exists() else "wb"
        with open(partial, mode) as f:
            f.seek(offset)
            f.write(data)
        return partial.stat().st_size

    async def commit(self, credential: str, name: str) -> int:
        """Check the upload against its address and keep it; ValueError (upload removed) on a mismatch."""
        await self._admin(credential)
        final = self._path(name)
        partial = final.with_suffix(final.suffix + ".part")
        if not partial.exists():
            raise FileNotFoundError(f"no upload of {name} in progress")
        if _sha256(partial) != name[:64]:
            partial.unlink()
            raise ValueError(f"the uploaded bytes do not hash to {name[:64]}: upload again")
        os.replace(partial, final)
        return final.stat().st_size

    async def read(self, name: str, offset: int, size: int) -> bytes:
        with open(self._path(name), "rb") as f:
            f.seek(offset)
            return f.read(min(size, CHUNK_BYTES))

    async def _admin(self, credential: str) -> None:
        try:
            admitted = await self._check_admin.check_admin.remote(credential)
        except Exception:
            admitted = False
        if not admitted:
            raise PermissionError("uploading weights needs raygpu's admin credential (the CLI's)")


def start_blobs(directory: str) -> Any:
    from deployments.store.actor import get_store

    handle = start_head_actor(
        WeightBlobs, constants.WEIGHT_BLOBS_ACTOR_NAME, directory, get_store(), max_concurrency=32, retry_tasks=True
    )
    ray.get(handle.has.remote("0" * 64))
    return handle


def blobs() -> Any:
    return ray.get_actor(constants.WEIGHT_BLOBS_ACTOR_NAME, namespace=constants.RAY_NAMESPACE)


def upload(path: str | Path, credential: str) -> tuple[WeightsLocation, bool]:
    """Upload a local weights file unless the cluster already has its bytes; returns its location
    and whether anything was sent."""
    name = blob_name(path)
    store = blobs()
    if ray.get(store.has.remote(name)):
        return WeightsLocation("blob", name), False
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            ray.get(store.put.remote(credential, name, offset, chunk))
            offset += len(chunk)
    if offset == 0:
        ray.get(store.put.remote(credential, name, 0, b""))
    ray.get(store.commit.remote(credential, name))
    return WeightsLocation("blob", name), True


def local_copy(name: str, directory: str | Path | None = None) -> Path:
    """This node's copy of a blob, fetched from the blob store the first time and checked against
    its address (a copy that does not match is fetched again)."""
    target_dir = private_dir(directory or constants.NODE_BLOB_DIR)
    target = target_dir / name
    if target.is_file() and _sha256(target) == name[:64]:
        return target
    store = blobs()
    total = ray.get(store.size.remote(name))
    partial = target.with_name(f"{name}.{os.getpid()}.part")
    with open(partial, "wb") as f:
        offset = 0
        while offset < total:
            data = ray.get(store.read.remote(name, offset, CHUNK_BYTES))
            if not data:
                break
            f.write(data)
            offset += len(data)
    if _sha256(partial) != name[:64]:
        partial.unlink(missing_ok=True)
        raise ValueError(f"the fetched weights blob {name} does not match its address")
    os.replace(partial, target)
    return target


def _sha256(path: Path) -> str:
    return blob_name(path)[:64]
