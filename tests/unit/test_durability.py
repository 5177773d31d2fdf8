"""A kill -9 of the process writing the ledger or the control-plane state loses no record it had
acknowledged (a real SQLite file, a real SIGKILL)."""

import os
import signal
import subprocess
import sys
import time

from billing.ledger import Ledger
from deployments.store.db import StateDB

LEDGER_WRITER = """
import sys
from billing.ledger import Ledger
ledger = Ledger(sys.argv[1])
i = 0
while True:
    batch = [{"id": f"e{i}-{j}", "app": "shop", "function": "add", "replica": "r1", "kind": "heartbeat",
              "ts": 1767607200.0 + i, "gpus": 1.0, "accelerator": "H100"} for j in range(20)]
    ledger.apply(batch, [])
    print(i, flush=True)  # acknowledged: committed
    i += 1
"""

STATE_WRITER = """
import sys
from deployments.store.db import StateDB
db = StateDB(sys.argv[1])
i = 0
while True:
    db.record_arrivals([("shop", "add", 1767607200.0 + i)] * 20)
    print(i, flush=True)
    i += 1
"""


def acknowledged_then_killed(script: str, path: str) -> int:
    proc = subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    last = -1
    deadline = time.monotonic() + 30
    while last < 50 and time.monotonic() < deadline:
        last = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)  # mid-write, most likely
    proc.wait()
    for line in proc.stdout:  # acknowledgements already written before the kill
        last = max(last, int(line))
    return last


def test_a_killed_meter_loses_no_acknowledged_event(tmp_path):
    path = str(tmp_path / "ledger.db")
    last = acknowledged_then_killed(LEDGER_WRITER, path)
    ids = {e.id for e in Ledger(path).events()}
    assert all(f"e{i}-{j}" in ids for i in range(last + 1) for j in range(20))


def test_a_killed_store_loses_no_acknowledged_arrival(tmp_path):
    path = str(tmp_path / "state.db")
    last = acknowledged_then_killed(STATE_WRITER, path)
    assert len(StateDB(path).arrivals("shop", "add")) >= (last + 1) * 20
