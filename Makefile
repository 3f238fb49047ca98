# The two commands: `make run` (the appliance from this checkout) and `make test`.
PYTHON ?= python3
VENV := .venv
ENGINE_VENV := $(CURDIR)/.venv-engine
APPLIANCE_ROOT ?= $(CURDIR)/.appliance
# `make run` serves this small instruct model unless VLLM_MODEL is set (even to empty).
RUN_MODEL := Qwen/Qwen2.5-0.5B-Instruct

.PHONY: proto run test test-fast test-unit bench lint install engine ray haproxy system-packages clean

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/pip install -q -e './client[openai]'
	touch $@

install: $(VENV)/.installed

# The engine in its own virtual environment, unless a `vllm` is already on PATH.
engine:
	@if command -v vllm >/dev/null 2>&1; then echo "using $$(command -v vllm)"; \
	else scripts/install-engine.sh $(ENGINE_VENV); fi

# Ray for the multi-node tests and `python -m bench multinode` (tests find it here, or at RAY_BIN).
ray:
	@test -x .venv-ray/bin/ray || { $(PYTHON) -m venv .venv-ray && .venv-ray/bin/pip install -q 'ray[default]==2.60.0'; }

# VLLM_CPU_KVCACHE_SPACE (GiB) only matters to vLLM's CPU build, whose default asks for most of the RAM.
# The engine venv goes last on PATH: a `vllm` the user already has wins over the one `make engine` installed.
# HAProxy for the router's fast path (Debian's package); where it cannot be installed the router serves alone.
haproxy:
	@command -v haproxy >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends haproxy; } || \
	  echo "make: no haproxy: the router serves the API port alone (docs/routing.md#the-fast-path)"

run: install engine haproxy
	APPLIANCE_ROOT="$(APPLIANCE_ROOT)" PATH="$$PATH:$(ENGINE_VENV)/bin" \
	VLLM_MODEL="$${VLLM_MODEL-$(RUN_MODEL)}" VLLM_CPU_KVCACHE_SPACE="$${VLLM_CPU_KVCACHE_SPACE-2}" ./entrypoint.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy client/vllm_appliance_client
	$(VENV)/bin/hadolint Dockerfile

# Debian packages the tests use: chromium for the portal's browser tests (never a browser download of
# playwright's own), openssh-server for the PUBLIC_KEY sshd, haproxy for the router's fast path.
system-packages:
	@command -v chromium >/dev/null && command -v sshd >/dev/null && command -v haproxy >/dev/null || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends chromium openssh-server haproxy; }

test: install lint system-packages ray
	scripts/install-engine.sh $(ENGINE_VENV)
	ENGINE_VENV="$(ENGINE_VENV)" $(VENV)/bin/python -m pytest

# The control-plane tests only (no real engine).
test-fast: install
	$(VENV)/bin/python -m pytest -m "not engine"

# The unit tier: logic only, no processes, seconds.
test-unit: install
	$(VENV)/bin/python -m pytest tests/unit -q

bench: install engine
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	ENGINE_VENV="$(ENGINE_VENV)" $(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) .appliance

# app/proto/inference_pb2.py (committed) from app/proto/inference.proto: run after changing the .proto.
proto: install
	$(VENV)/bin/python -m grpc_tools.protoc -I app/proto --python_out=app/proto --pyi_out=app/proto app/proto/inference.proto
