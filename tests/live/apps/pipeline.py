"""A three-stage pipeline (HTTP -> stage_a -> stage_b -> stage_c), each stage its own GPU function
calling the next inside the cluster; a stage whose callee's queue is full; a function that raises
twice then succeeds under a retry policy."""

import os
import threading
import time
from pathlib import Path

import raygpu

app = raygpu.App("pipeline")


@app.function(gpu="H100", scaledown_window=30)
def stage_a(text: str, pid_file: str | None = None, hold_s: float = 0.0) -> dict:
    """Sync stage: calls stage_b with `.remote`."""
    later = raygpu.lookup("pipeline", "stage_b").remote(text=text.strip(), pid_file=pid_file, hold_s=hold_s)
    return {"a": raygpu.current_call_id(), **later}


@app.function(gpu="H100", scaledown_window=30)
async def stage_b(text: str, pid_file: str | None = None, hold_s: float = 0.0) -> dict:
    """Async stage: awaits stage_c with `.remote.aio`."""
    later = await raygpu.lookup("pipeline", "stage_c").remote.aio(text=text.upper(), pid_file=pid_file, hold_s=hold_s)
    return {"b": raygpu.current_call_id(), **later}


@app.function(gpu="H100", scaledown_window=30)
def stage_c(text: str, pid_file: str | None = None, hold_s: float = 0.0) -> dict:
    """Last stage. With `pid_file`, the first replica to see it writes its pid there and holds the
    call `hold_s` seconds (a test kills it then); the replica the call is resent to answers at once."""
    if pid_file and not os.path.exists(pid_file):
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(hold_s)
    return {"c": raygpu.current_call_id(), "text": f"<{text}>", "pid": os.getpid()}


@app.function(max_containers=1, max_inputs=1, max_queue=0, scaledown_window=30)
def narrow(seconds: float = 1.0) -> float:
    time.sleep(seconds)
    return seconds


@app.function(max_inputs=1, scaledown_window=30)
def crowd(calls: int = 3) -> list:
    """Calls `narrow` (queue bound 1) several times at once and does not catch its QueueFull."""
    results: list = [None] * calls
    errors: list = []

    def one(i: int) -> None:
        try:
            results[i] = raygpu.lookup("pipeline", "narrow").remote(seconds=1.0)
        except raygpu.RemoteCallError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@app.function(scaledown_window=30, retries=raygpu.Retries(max_retries=2, initial_delay=0.2, backoff_coefficient=2.0))
def flaky(marker: str, failures: int = 2) -> dict:
    """Raises on its first `failures` runs for `marker` (counted in the marker file), then answers."""
    path = Path(marker)
    runs = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(runs))
    if runs <= failures:
        raise RuntimeError(f"run {runs} fails")
    return {"runs": runs, "call_id": raygpu.current_call_id()}
