"""Errors a raygpu user can meet, each with a message that says what to do next."""

from __future__ import annotations


class RaygpuError(Exception):
    """Base class of raygpu's user-facing errors."""


class InvalidSpecError(RaygpuError, ValueError):
    """A decorator was given an invalid setting; the message names the field."""


class NoClusterError(RaygpuError):
    """No raygpu cluster could be reached."""


class DeployError(RaygpuError):
    """A deploy was refused; nothing was changed on the cluster."""


class NotFoundError(RaygpuError):
    """The app or function is not deployed."""


class RemoteCallError(RaygpuError):
    """A remote call failed; `status` is the HTTP status the gateway would have answered."""

    def __init__(self, status: int, error_type: str, message: str, details: object = None):
        self.status = status
        self.error_type = error_type
        self.details = details
        super().__init__(f"{error_type}: {message}")


class AdminCredentialError(RaygpuError):
    """A call that changes the control plane lacks a valid admin credential."""
