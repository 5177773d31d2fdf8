"""Import paths of modules that moved into raygpu's rooms (`raygpu.sdk`, `raygpu.ops`,
`raygpu.controlplane`) keep working: `import raygpu.deploy` gives the very module
`raygpu.ops.deploy` is, so code and pickles that name an old path load unchanged."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

ROOMS = {
    "sdk": ("app", "client", "calls", "batch", "errors", "loader", "testing", "connection", "control", "home", "admin"),
    "ops": ("deploy", "rollout", "placement", "tokens", "usage", "logs", "contracts", "operations", "doctor"),
    "controlplane": ("control_plane", "control_driver", "local_cluster", "admin_api"),
}
MOVED = {f"raygpu.{name}": f"raygpu.{room}.{name}" for room, names in ROOMS.items() for name in names}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The module ran when its new path was imported."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds an old path's module at its new one."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
