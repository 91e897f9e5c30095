# dbrev — see README.md.  `make demo` runs the main job, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CLUSTER_DIR ?= $(CURDIR)/.cluster

.PHONY: setup test test-fast demo bench cluster-assets cluster-up cluster-down crds clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run every test: real PostgreSQL, real kube-apiserver + etcd, real kubectl/promtool/lua.
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

## Only the tests that need neither a database nor a cluster (the functional core).
test-fast: setup
	$(PY) -m pytest -q -m "not cluster" tests/core $(PYTEST_ARGS)

## The main job on a fresh machine.
demo: setup
	$(PY) -m dbrev.demo

bench: setup
	$(PY) bench/run_all.py

## Build (or confirm) kube-apiserver, etcd and kubectl in the cache outside the repo.
cluster-assets: setup
	$(PY) -m dbrev.envtest.assets

## Start a local control plane; prints the kubeconfig path and the start-up time.
cluster-up: setup
	$(PY) -m dbrev.envtest.controlplane up --dir $(CLUSTER_DIR)

cluster-down: setup
	$(PY) -m dbrev.envtest.controlplane down --dir $(CLUSTER_DIR)

clean:
	rm -rf $(VENV) build *.egg-info operator/*.egg-info .pytest_cache

## Regenerate crds/ from operator/dbrev/crd.py (the one source of truth; a test fails when stale).
crds: setup
	$(PY) -m dbrev.crd .
