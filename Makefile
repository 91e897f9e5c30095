# dbrev — see README.md.  `make demo` runs the main job, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CLUSTER_DIR ?= $(CURDIR)/.cluster

.PHONY: setup test test-operator test-fast demo bench cluster-assets cluster-up cluster-down crds clean
.PHONY: node-assets node-images node-up node-down wheelhouse
.PHONY: kind-up image kind-load deploy undeploy e2e-kind

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run every test: real PostgreSQL, real kube-apiserver + etcd, real kubectl/promtool/lua.
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

## The operator end-to-end tests only: by default the operator as the Deployment from manifests/, in its
## Pod on the one-node cluster (root); `make test-operator OPERATOR=process`: as a host process (quick).
test-operator: setup
	DBREV_TEST_OPERATOR=$(OPERATOR) $(PY) -m pytest -q tests/operator $(PYTEST_ARGS)

## Only the tests that need neither a database nor a cluster (the functional core).
test-fast: setup
	$(PY) -m pytest -q -m "not cluster" tests/core $(PYTEST_ARGS)

## The main job on a fresh machine: control plane + PostgreSQL + operator, upgrade and rollback.
demo: setup
	.ci/install-deps --demo
	$(PY) -m dbrev_dev.demo

bench: setup
	$(PY) bench/run_all.py

## Build (or confirm) kube-apiserver, etcd and kubectl in the cache outside the repo.
cluster-assets: setup
	$(PY) -m dbrev_dev.envtest.assets

## Start a local control plane; prints the kubeconfig path and the start-up time.
## `make cluster-up NODE=1`: a real one-node cluster instead (root; see docs/control-plane.md).
cluster-up: setup
ifdef NODE
	$(MAKE) --no-print-directory node-up
else
	$(PY) -m dbrev_dev.envtest.controlplane up --dir $(CLUSTER_DIR)
endif

cluster-down: setup
	$(PY) -m dbrev_dev.envtest.controlplane down --dir $(CLUSTER_DIR)
	@if [ -d $(CLUSTER_DIR)/node ] || ip netns list 2>/dev/null | grep -q '^dbrev-node'; then \
	  $(PY) -m dbrev_dev.envtest.node down --dir $(CLUSTER_DIR)/node; fi

## kubelet, kube-controller-manager, kube-scheduler, kube-proxy (same version, same cache).
node-assets: setup
	$(PY) -m dbrev_dev.envtest.assets --node

## The pause image, a Debian base (debootstrap) and the operator image, as archives in the cache.
node-images: setup
	$(PY) -m dbrev_dev.envtest.images

## A real one-node cluster (containerd, kubelet; local traffic only) with PostgreSQL inside it and
## the operator image loaded; prints the kubeconfig. Needs root and Debian's containerd, runc, CNI.
node-up: node-assets node-images
	.ci/install-deps --node
	$(PY) -m dbrev_dev.envtest.node up --dir $(CLUSTER_DIR)/node --postgres --image

node-down: setup
	$(PY) -m dbrev_dev.envtest.node down --dir $(CLUSTER_DIR)/node

clean:
	rm -rf $(VENV) build *.egg-info operator/*.egg-info .pytest_cache .wheelhouse/*.whl .wheelhouse/.key

## Regenerate crds/ from operator/dbrev/controller/crd.py (the one source of truth; a test fails when stale).
crds: setup
	$(PY) -m dbrev.controller.crd .

# ---------------------------------------------------------------------------------------------------
# With Docker: an image, a kind cluster, the manifests. These need docker (with a running daemon),
# kind and kubectl, and stop with a clear message on machines without them; `make test` needs none of
# them. See docs/install.md.
#   make kind-up image kind-load deploy     # the operator running in kind, from this checkout
#   make e2e-kind                           # that, then the end-to-end tests against kind
IMG ?= dbrev:dev
KIND_CLUSTER ?= dbrev
KUBECTL ?= kubectl
KUBECTL_FLAGS ?=
OVERLAY ?= cluster-wide
KIND_KUBECONFIG ?= $(CLUSTER_DIR)/kind-$(KIND_CLUSTER).kubeconfig
K := $(KUBECTL) $(KUBECTL_FLAGS)

# $(call need,TOOLS): stop unless every tool is on PATH (and, for docker, a daemon answers).
need = @for t in $(1); do \
	  command -v $$t >/dev/null 2>&1 || { echo "error: 'make $@' needs $$t, which is not on PATH (these targets are for machines with Docker, kind and kubectl: see docs/install.md)" >&2; exit 1; }; \
	  if [ $$t = docker ] && ! docker info >/dev/null 2>&1; then echo "error: 'make $@' needs a running Docker daemon ('docker info' failed)" >&2; exit 1; fi; \
	done

## Create the kind cluster $(KIND_CLUSTER) (kept if it exists); kubectl's context becomes kind-$(KIND_CLUSTER).
kind-up:
	$(call need,docker kind)
	@if kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then echo "kind cluster $(KIND_CLUSTER) already exists"; \
	else kind create cluster --name $(KIND_CLUSTER) --wait 120s; fi

## Build the operator image $(IMG) (Dockerfile: multi-stage, non-root, no build tools) from
## BASE_IMAGE (default python:3.11-slim). With a Docker daemon: `docker build`. Without one (this
## project's CI: no daemon, no registry): buildah on a Debian base made locally with debootstrap,
## saved as an archive in ~/.cache/dbrev/images (what the one-node cluster loads).
BASE_IMAGE ?= python:3.11-slim
image:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  echo "docker build -t $(IMG) --build-arg BASE_IMAGE=$(BASE_IMAGE) ."; \
	  docker build -t $(IMG) --build-arg BASE_IMAGE=$(BASE_IMAGE) .; \
	elif command -v buildah >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory setup && $(PY) -m dbrev_dev.envtest.images operator; \
	else echo "error: 'make image' needs docker (with a running daemon) or buildah: see docs/install.md" >&2; exit 1; fi

## Wheels of dbrev and its dependencies in .wheelhouse/: the Dockerfile then builds offline.
wheelhouse: setup
	$(PY) -c 'from pathlib import Path; from dbrev_dev.envtest.images import wheelhouse; print(wheelhouse(Path(".").resolve()))'

## Build $(IMG) and load it into the kind cluster's nodes (no registry needed).
kind-load: image
	$(call need,docker kind)
	kind load docker-image $(IMG) --name $(KIND_CLUSTER)

## Install the CRDs and manifests/overlays/$(OVERLAY) (cluster-wide or namespaced) with image $(IMG)
## into kubectl's current context.
deploy:
	$(call need,$(KUBECTL))
	$(K) apply -k crds
	$(K) wait --for=condition=Established --timeout=60s crd/databaserevisions.dbrev.io \
	  crd/kopfpeerings.kopf.dev crd/clusterkopfpeerings.kopf.dev
	$(K) kustomize manifests/overlays/$(OVERLAY) | sed 's|image: ghcr.io/dbrev/dbrev:.*|image: $(IMG)|' | $(K) apply -f -

## Remove the operator of manifests/overlays/$(OVERLAY) (Deployment, Service, RBAC, peering object). The
## CRDs, the namespace and your DatabaseRevisions stay (deleting the CRDs would delete every
## DatabaseRevision; the databases themselves are never touched).
undeploy:
	$(call need,$(KUBECTL))
	$(K) kustomize manifests/overlays/$(OVERLAY) | $(K) delete --ignore-not-found -l app.kubernetes.io/component=operator -f -
	@echo "kept: the CRDs (kubectl delete -k crds) and the namespace dbrev-system"

## kind: deploy this checkout's image and wait until the operator pod is Ready on a real kubelet (image,
## non-root user, read-only root filesystem, probes); stop it; then run the manifest and end-to-end
## tests against kind. The e2e tests start the operator as a local process (with the manifests'
## ServiceAccount token): their PostgreSQL runs on this machine, out of the pods' reach.
e2e-kind: kind-up kind-load setup
	$(call need,docker kind $(KUBECTL))
	$(MAKE) --no-print-directory deploy KUBECTL_FLAGS=--context=kind-$(KIND_CLUSTER)
	$(KUBECTL) --context=kind-$(KIND_CLUSTER) -n dbrev-system rollout status deployment/dbrev-operator --timeout=180s
	$(KUBECTL) --context=kind-$(KIND_CLUSTER) -n dbrev-system scale deployment/dbrev-operator --replicas=0
	$(KUBECTL) --context=kind-$(KIND_CLUSTER) -n dbrev-system wait --for=delete pod \
	  -l app.kubernetes.io/component=operator --timeout=120s
	@mkdir -p $(dir $(KIND_KUBECONFIG))
	kind get kubeconfig --name $(KIND_CLUSTER) > $(KIND_KUBECONFIG)
	DBREV_TEST_KUBECONFIG=$(KIND_KUBECONFIG) $(PY) -m pytest -q tests/ship tests/operator $(PYTEST_ARGS)
	@echo "the in-cluster operator is scaled to 0; start it again with:"
	@echo "  $(KUBECTL) --context=kind-$(KIND_CLUSTER) -n dbrev-system scale deployment/dbrev-operator --replicas=1"
