"""Importing a user's app file: `path/to/app.py` or `path/to/app.py::APP_NAME`.

The module is imported under a private name and registered for pickling by value, so its
functions and classes travel to replicas without the file being importable there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path

import cloudpickle

from raygpu.sdk.app import App
from raygpu.sdk.errors import DeployError, InvalidSpecError


def split_target(target: str) -> tuple[Path, str | None]:
    path_text, _, app_name = target.partition("::")
    return Path(path_text), (app_name or None)


def load_apps(path: Path) -> tuple[dict[str, App], str]:
    """Import `path` and return its App objects by name, and a content hash of the file."""
    if not path.exists():
        raise DeployError(f"{path}: no such file")
    if path.suffix != ".py":
        raise DeployError(f"{path}: expected a Python file (*.py)")
    source = path.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    module_name = f"raygpu_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DeployError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    parent = str(path.resolve().parent)
    added_path = parent not in sys.path
    if added_path:
        sys.path.insert(0, parent)
    try:
        spec.loader.exec_module(module)
    except InvalidSpecError as exc:
        sys.modules.pop(module_name, None)
        raise DeployError(f"{path}: {exc}") from None
    except BaseException as exc:  # a SystemExit in user code must not end the CLI either
        sys.modules.pop(module_name, None)
        detail = "".join(traceback.format_exception(exc)[-6:])
        raise DeployError(f"{path} failed to import; nothing was deployed:\n{detail}") from None
    finally:
        if added_path:
            sys.path.remove(parent)
    cloudpickle.register_pickle_by_value(module)
    apps = {value.name: value for value in vars(module).values() if isinstance(value, App)}
    return apps, digest


def load_app(target: str) -> tuple[App, Path, str]:
    path, app_name = split_target(target)
    apps, digest = load_apps(path)
    if not apps:
        raise DeployError(f'{path} defines no raygpu.App; add `app = raygpu.App("name")` and decorate functions')
    if app_name is None:
        if len(apps) > 1:
            raise DeployError(f"{path} defines several apps ({', '.join(sorted(apps))}); pick one with {path}::NAME")
        app = next(iter(apps.values()))
    elif app_name not in apps:
        raise DeployError(f"{path} has no app {app_name!r}; it defines: {', '.join(sorted(apps))}")
    else:
        app = apps[app_name]
    if not app.specs:
        raise DeployError(f"app {app.name!r} has no functions; decorate one with @{app.name}.function()")
    return app, path, digest
