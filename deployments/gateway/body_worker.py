"""A body-check worker: a small process the gateway hands large request bodies to, so their parse
never holds the gateway's event loop. Reads `<8-byte big-endian length><body>` from stdin and
answers one JSON line per body: `{"ok": true}` or `{"type": ..., "message": ...}` (the BodyError
the gateway answers 400 with). Imports only the standard library and the pure body module."""

from __future__ import annotations

import json
import sys

from deployments.gateway.body import BodyError, parse_arguments


def verdict(raw: bytes) -> dict[str, object]:
    try:
        parse_arguments(raw)
    except BodyError as exc:
        return {"type": exc.error_type, "message": exc.message}
    return {"ok": True}


def main() -> None:
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = source.read(8)
        if len(header) < 8:
            return
        raw = source.read(int.from_bytes(header, "big"))
        sink.write(json.dumps(verdict(raw)).encode() + b"\n")
        sink.flush()


if __name__ == "__main__":
    main()
