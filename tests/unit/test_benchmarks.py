"""Every benchmark still runs as far as a check without a cluster can see: its arguments parse and
every app it generates is a valid raygpu app (the decorators validate it when the file loads)."""

import importlib
import pkgutil

import pytest

import benchmarks

# every module is a benchmark but the harness and the helpers a benchmark splits off (named _*)
MODULES = sorted(
    name
    for _, name, _ in pkgutil.iter_modules(benchmarks.__path__)
    if name not in ("harness", "__init__") and not name.startswith("_")
)


def test_every_benchmark_is_found():
    assert {"cold_start", "vllm_throughput", "autoscaling", "scale", "serving"} <= set(MODULES)
    assert {"cold_start", "vllm_throughput", "metering", "node_cold_start", "scale", "serving"} <= set(WITH_APPS)


@pytest.mark.parametrize("name", MODULES)
def test_the_arguments_parse_with_their_defaults(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.main)
    args = module.build_parser().parse_args([])
    assert args.json_path is None


WITH_APPS = [m for m in MODULES if hasattr(importlib.import_module(f"benchmarks.{m}"), "app_sources")]


@pytest.mark.parametrize("name", WITH_APPS)
def test_every_generated_app_loads(name, tmp_path):
    from raygpu.sdk.loader import load_app

    module = importlib.import_module(f"benchmarks.{name}")
    sources = module.app_sources(tmp_path)
    assert sources
    for filename, source in sources.items():
        path = tmp_path / filename
        path.write_text(source)
        app, loaded_path, digest = load_app(str(path))
        assert app.specs, f"{name}: {filename} defines no function"
