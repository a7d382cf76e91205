# CliCooper — set-up and main jobs. Every target creates .venv if missing and installs the project with
# the exact versions of constraints.txt (torch==2.13.0: an open range would pull a multi-GB CUDA build;
# any open range can resolve differently tomorrow). `make lock` refreshes constraints.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= runs/demo
# experiments/, benchmarks/ and testbed/ sit beside the package (not installed): every target runs from the
# repository root, where `python -m` and lint-imports find them.

.PHONY: setup lock data demo quick test docs bench bench-wan reproduce lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt pip setuptools
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt --no-build-isolation -e ".[dev,cluster]"
	touch $(STAMP)

# Resolve pyproject.toml's ranges anew in a scratch venv (pip cache bypassed) and pin the result.
LOCK_VENV := build/lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --no-cache-dir --upgrade pip setuptools
	$(LOCK_VENV)/bin/python -m pip install -q --no-cache-dir torch==2.13.0
	$(LOCK_VENV)/bin/python -m pip install -q --no-cache-dir -e ".[dev,cluster]"
	{ head -2 constraints.txt; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

setup: $(STAMP)

# Fashion-MNIST comes from Debian's package (no download at run time).
$(FMNIST):
	@if [ "$$(id -u)" = "0" ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	else sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; fi

data: $(FMNIST)

demo: $(STAMP) $(FMNIST)
	$(BIN)/python -m experiments.demo --out $(DEMO_OUT)

# A first result in about a minute: digits (no download), one step-free attack, the report's summary.
quick: $(STAMP)
	$(BIN)/python -m experiments.demo --quick

test: $(STAMP) $(FMNIST)
	$(BIN)/lint-imports --no-logo  # the layer contracts of pyproject.toml [tool.importlinter]
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site-check  # a broken link or API reference fails
	$(BIN)/python -m pytest -q

# The documentation site (mkdocs.yml) into site/; open site/index.html.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# In-process: centralized vs split (plain, defended, with provenance), interleaved medians: torch on every
# core, then one compute thread (a core left to the transcript-hash worker and the noise prefetcher).
# Then the same model over loopback gRPC, one process per party (M = 1 and 4 micro-batches).
bench: $(STAMP) $(FMNIST)
	$(BIN)/python -m benchmarks.inprocess
	$(BIN)/python -m benchmarks.inprocess --threads 1
	$(BIN)/python -m benchmarks.nodes --micro 1,4

# Wide-area: every party in its own network namespace (root; skips with the reason otherwise), veth links
# shaped with tbf, latency/jitter/stalls from relays; lan / wan / poor × micro-batches, TLS on, samples/s
# against the bandwidth limit; then the fault drills (link drop, resets + stalls, kill, frozen peer).
bench-wan: $(STAMP) $(FMNIST)
	$(BIN)/python -m benchmarks.wan
	$(BIN)/python -m benchmarks.wan_faults

reproduce: $(STAMP) $(FMNIST)
	$(BIN)/python -m experiments.reproduce --out results

lint: $(STAMP)
	$(BIN)/ruff check src tests experiments benchmarks testbed
	$(BIN)/lint-imports --no-logo

clean:
	rm -rf $(VENV) build dist site *.egg-info
