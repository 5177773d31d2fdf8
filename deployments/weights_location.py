"""Where a model's weights live: a content-addressed blob in the cluster's state (uploaded from the
deployer's machine, fetched by each node), or a `file://` path on storage every node mounts, read
in place. No Ray."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

BLOB_SCHEME = "raygpu-blob://"
FILE_SCHEME = "file://"
# sha256 hex, then the file's suffix (how the loader tells safetensors from torch.save files)
BLOB_NAME = re.compile(r"^(?P<sha>[0-9a-f]{64})(?P<suffix>\.[A-Za-z0-9_]{1,16})?$")
HASH_CHUNK = 8 * 2**20


@dataclass(frozen=True)
class WeightsLocation:
    kind: str  # "blob" or "file"
    path: str  # the blob's name (sha256 + suffix), or the file's absolute path

    @property
    def sha256(self) -> str | None:
        return self.path[:64] if self.kind == "blob" else None

    @property
    def uri(self) -> str:
        return BLOB_SCHEME + self.path if self.kind == "blob" else FILE_SCHEME + self.path


def parse_location(text: str) -> WeightsLocation:
    """A `raygpu-blob://SHA256[.suffix]` or `file:///abs/path` location; ValueError otherwise."""
    if text.startswith(BLOB_SCHEME):
        name = text[len(BLOB_SCHEME) :]
        if not BLOB_NAME.match(name):
            raise ValueError(f"{text!r} is not a weights blob (raygpu-blob://<sha256>[.suffix])")
        return WeightsLocation("blob", name)
    if text.startswith(FILE_SCHEME):
        path = text[len(FILE_SCHEME) :]
        if not path.startswith("/"):
            raise ValueError(f"{text!r} must name an absolute path: file:///mnt/models/ranker.safetensors")
        return WeightsLocation("file", path)
    raise ValueError(f"{text!r} is neither raygpu-blob://... nor file:///...")


def is_location(text: str) -> bool:
    return text.startswith((BLOB_SCHEME, FILE_SCHEME))


def blob_name(path: str | Path) -> str:
    """The content address of a local file: its sha256 and suffix (reads the file once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    suffix = Path(path).suffix
    return digest.hexdigest() + (suffix if re.fullmatch(r"\.[A-Za-z0-9_]{1,16}", suffix) else "")
