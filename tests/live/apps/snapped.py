"""Classes whose `snap=True` enter hooks run ahead in warm workers of the app."""

import os
import time

import raygpu

app = raygpu.App("snapped")
CODE_VERSION = 1


@app.cls(scaledown_window=2, image=raygpu.Image(env={"SNAP_MODE": "ahead"}))
class Snapper:
    @raygpu.enter(snap=True)
    def load(self):
        self.snapped = {"pid": os.getpid(), "at": time.time(), "mode": os.environ.get("SNAP_MODE")}

    @raygpu.enter()
    def place(self):
        self.placed = {"pid": os.getpid(), "at": time.time()}

    @raygpu.method()
    def info(self) -> dict:
        warm = os.environ.get("RAYGPU_WARM_WORKER")
        return {"snapped": self.snapped, "placed": self.placed, "pid": os.getpid(), "code": CODE_VERSION, "warm": warm}


@app.cls(scaledown_window=2)
class Other:
    @raygpu.enter(snap=True)
    def load(self):
        self.pid = os.getpid()

    @raygpu.method()
    def pid_of_load(self) -> int:
        return self.pid


@app.cls(scaledown_window=2)
class CudaSnap:
    @raygpu.enter(snap=True)
    def load(self):
        import torch

        self.weights = torch.ones(2).to("cuda")

    @raygpu.method()
    def go(self) -> int:
        return 1


@app.function(scaledown_window=2, enable_memory_snapshot=True)
def ahead() -> dict:
    return {"pid": os.getpid(), "warm": os.environ.get("RAYGPU_WARM_WORKER")}


@app.cls(scaledown_window=2, image=raygpu.Image(pip=["six==1.16.0"]))
class Piped:
    @raygpu.enter(snap=True)
    def load(self):
        import six

        self.version = six.__version__

    @raygpu.method()
    def version_of_six(self) -> str:
        return self.version
