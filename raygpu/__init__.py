"""raygpu: self-hosted serverless GPU functions on Ray Serve.

app = raygpu.App("demo")

@app.function(gpu="H100", scaledown_window=30)
def hello(name: str) -> str:
    return f"hello {name}"
"""

from deployments.calls.context import current_call_id
from deployments.calls.retries import Retries
from deployments.spec import FunctionSpec, Image
from raygpu import _moved
from raygpu.sdk.app import App, Function, Model, enter, exit, method, torch_model, vllm
from raygpu.sdk.calls import FunctionCall
from raygpu.sdk.client import lookup
from raygpu.sdk.errors import (
    DeployError,
    FunctionNotFound,
    FunctionTimeout,
    InvalidArguments,
    InvalidSpecError,
    NoClusterError,
    NotFoundError,
    QueueFull,
    RaygpuError,
    RemoteCallError,
    RemoteError,
    ReplicaLost,
    Unavailable,
)
from raygpu.sdk.schedule import Cron, Period
from raygpu.sdk.secret import Secret

__version__ = "0.1.0"

_moved.install()  # raygpu.deploy, raygpu.client, ...: the paths from before the rooms still import

__all__ = [
    "App",
    "Function",
    "FunctionCall",
    "FunctionSpec",
    "Image",
    "Model",
    "enter",
    "exit",
    "method",
    "lookup",
    "current_call_id",
    "Retries",
    "Secret",
    "Cron",
    "Period",
    "torch_model",
    "vllm",
    "RaygpuError",
    "InvalidSpecError",
    "NoClusterError",
    "DeployError",
    "NotFoundError",
    "RemoteCallError",
    "QueueFull",
    "FunctionTimeout",
    "RemoteError",
    "ReplicaLost",
    "InvalidArguments",
    "Unavailable",
    "FunctionNotFound",
]
