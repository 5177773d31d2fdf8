"""Lifecycle markers of an `@app.cls` class and the code that runs its enter and exit hooks.

Shared by the SDK (plain local calls) and the replica, so both run hooks the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

ENTER_MARK = "_raygpu_enter"
EXIT_MARK = "_raygpu_exit"
METHOD_MARK = "_raygpu_method"
ENTERED_FLAG = "_raygpu_entered"


def lifecycle_hooks(cls: type, mark: str) -> list[Callable[[Any], Any]]:
    return [member for _, member in inspect.getmembers(cls, inspect.isfunction) if getattr(member, mark, False)]


def method_names(cls: type) -> list[str]:
    return [name for name, member in inspect.getmembers(cls, inspect.isfunction) if getattr(member, METHOD_MARK, False)]


def run_enter_hooks(instance: Any) -> None:
    """Run the instance's enter hooks once (in a replica, or lazily on a plain local call)."""
    if instance.__dict__.get(ENTERED_FLAG):
        return
    instance.__dict__[ENTERED_FLAG] = True
    for hook in lifecycle_hooks(type(instance), ENTER_MARK):
        hook(instance)


def run_exit_hooks(instance: Any) -> None:
    """Run the exit hooks of an instance whose enter hooks ran."""
    if not instance.__dict__.get(ENTERED_FLAG):
        return
    instance.__dict__[ENTERED_FLAG] = False
    for hook in lifecycle_hooks(type(instance), EXIT_MARK):
        hook(instance)
