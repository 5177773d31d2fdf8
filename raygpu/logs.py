"""Replica logs of an app or one of its units: read from the local cluster's session directory,
or through Ray's log API on a remote cluster."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from deployments.spec import version_app_prefix
from raygpu.home import read_local_cluster


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

    out = []
    for node in ray.nodes():  # replicas log on the node they ran on
        if not node.get("Alive"):
            continue
        groups = list_logs(node_id=node["NodeID"], glob_filter=pattern)
        for name in groups.get("serve", []):
            out.append((name, "".join(get_log(filename=f"serve/{name}", node_id=node["NodeID"], tail=lines))))
    return sorted(out)
