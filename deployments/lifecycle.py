"""Lifecycle markers of an `@app.cls` class and the code that runs its enter and exit hooks.

Shared by the SDK (plain local calls), the warm workers that run an app's `snap=True` hooks ahead of
its replicas, and the replica, so all run hooks the same way: the `snap=True` hooks first (the
CPU-side part of start-up), then the others.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

ENTER_MARK = "_raygpu_enter"
EXIT_MARK = "_raygpu_exit"
METHOD_MARK = "_raygpu_method"
SNAP_MARK = "_raygpu_snap"
ENTERED_FLAG = "_raygpu_entered"
SNAPPED_FLAG = "_raygpu_snapped"


def lifecycle_hooks(cls: type, mark: str) -> list[Callable[[Any], Any]]:
    return [member for _, member in inspect.getmembers(cls, inspect.isfunction) if getattr(member, mark, False)]


def method_names(cls: type) -> list[str]:
    return [name for name, member in inspect.getmembers(cls, inspect.isfunction) if getattr(member, METHOD_MARK, False)]


def snap_hook_names(cls: type) -> list[str]:
    """The class's `@raygpu.enter(snap=True)` hooks, by name."""
    return [hook.__name__ for hook in lifecycle_hooks(cls, ENTER_MARK) if getattr(hook, SNAP_MARK, False)]


def run_snap_hooks(instance: Any, guard: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None) -> None:
    """Run the instance's `snap=True` enter hooks once (ahead of its replica, in a warm worker), each
    inside `guard(its name)` when given (what refuses CUDA there)."""
    if instance.__dict__.get(SNAPPED_FLAG):
        return
    instance.__dict__[SNAPPED_FLAG] = True
    for hook in lifecycle_hooks(type(instance), ENTER_MARK):
        if getattr(hook, SNAP_MARK, False):
            with guard(f"the snap=True enter hook {hook.__qualname__}") if guard else contextlib.nullcontext():
                hook(instance)


def run_enter_hooks(instance: Any) -> None:
    """Run the instance's enter hooks once (in a replica, or lazily on a plain local call): its
    `snap=True` ones unless they ran already, then the others."""
    if instance.__dict__.get(ENTERED_FLAG):
        return
    instance.__dict__[ENTERED_FLAG] = True
    run_snap_hooks(instance)
    for hook in lifecycle_hooks(type(instance), ENTER_MARK):
        if not getattr(hook, SNAP_MARK, False):
            hook(instance)


def run_exit_hooks(instance: Any) -> None:
    """Run the exit hooks of an instance whose enter hooks ran."""
    if not instance.__dict__.get(ENTERED_FLAG):
        return
    instance.__dict__[ENTERED_FLAG] = False
    for hook in lifecycle_hooks(type(instance), EXIT_MARK):
        hook(instance)
