"""Replica logs of an app or one of its units: read from the local cluster's session directory,
or through Ray's log API on a remote cluster."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from deployments.spec import version_app_prefix
from raygpu.sdk.home import read_local_cluster


def replica_logs(target: str, lines: int = 100, remote: bool = False) -> list[tuple[str, str]]:
    """(log file name, its last `lines` lines) of each replica log of APP or APP/FN."""
    app, _, function = target.partition("/")
    pattern = f"replica_{version_app_prefix(app)}*_{function or ''}*.log"
    local = None if remote else read_local_cluster()
    if local is not None:
        paths = sorted(glob.glob(os.path.join(local.temp_dir, "session_latest", "logs", "serve", pattern)))
        return [
            (os.path.basename(path), "".join(Path(path).read_text(errors="replace").splitlines(keepends=True)[-lines:]))
            for path in paths
        ]
    import ray
    from ray.util.state import get_log, list_logs

    # This cluster's address, not a search of the machine: that fails when another Ray runs there.
    address = ray.get_runtime_context().gcs_address
    out = []
    for node in ray.nodes():  # replicas log on the node they ran on
        if not node.get("Alive"):
            continue
        groups = list_logs(address=address, node_id=node["NodeID"], glob_filter=pattern)
        for name in groups.get("serve", []):
            log = get_log(address=address, filename=f"serve/{name}", node_id=node["NodeID"], tail=lines)
            out.append((name, "".join(log)))
    return sorted(out)
