"""Errors a raygpu user can meet, each with a message that says what to do next."""

from __future__ import annotations

from deployments.errors import (
    FunctionNotFound,
    FunctionTimeout,
    InvalidArguments,
    InvalidSpecError,
    QueueFull,
    RaygpuError,
    RemoteCallError,
    RemoteError,
    ReplicaLost,
    Unavailable,
)

__all__ = [
    "AdminCredentialError",
    "DeployError",
    "FunctionNotFound",
    "FunctionTimeout",
    "InvalidArguments",
    "InvalidSpecError",
    "NoClusterError",
    "NotFoundError",
    "QueueFull",
    "RaygpuError",
    "RemoteCallError",
    "RemoteError",
    "ReplicaLost",
    "Unavailable",
]


class NoClusterError(RaygpuError):
    """No raygpu cluster could be reached."""


class DeployError(RaygpuError):
    """A deploy was refused; nothing was changed on the cluster."""


class NotFoundError(RaygpuError):
    """The app or function is not deployed."""


class AdminCredentialError(RaygpuError):
    """A call that changes the control plane lacks a valid admin credential."""
