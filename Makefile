# pretrain-operator: the conventional entry points (kubebuilder habits).
# `make test` sets up a fresh machine (virtualenv, Debian packages, Go-built control plane; all
# cached outside the repository) and runs lint, type checks and every test.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
CACHE ?= $(or $(PRETRAIN_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/pretrain-operator)
export PRETRAIN_CACHE := $(CACHE)
UV_VERSION := 0.13.8
UV := $(CACHE)/uv-$(UV_VERSION)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
CLUSTER_DIR := .cluster
PYTEST_ARGS ?=
# Debian packages the tests, `make image` and the real nodes need: Prometheus (promtool too),
# buildah and debootstrap (the base image, where no registry can be pulled from), containerd,
# runc, the CNI plugins and tini (a subreaper for containerd's shims) under each node's kubelet,
# iproute2 (the nodes' host bridge), iptables (the rule that takes pods to the `kubernetes` Service).
DEBIAN_PACKAGES := prometheus buildah debootstrap containerd runc containernetworking-plugins \
	tini iproute2 iptables

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# ---- setting up -------------------------------------------------------------------------

# uv itself from hack/uv.txt (its hashes; `make lock` writes it from UV_VERSION).
$(UV): | hack/uv.txt
	$(PYTHON) -m venv $(CACHE)/uv-$(UV_VERSION)
	$(CACHE)/uv-$(UV_VERSION)/bin/pip install --quiet --require-hashes -r hack/uv.txt

# Exactly what uv.lock says (`--locked`: a lock that disagrees with a pyproject is an error, fixed
# by `make lock`), and nothing else in the environment.
$(VENV)/.installed: $(UV) pyproject.toml uv.lock operator/pyproject.toml trainer/pyproject.toml hack/pyproject.toml
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --quiet --locked --python $(PYTHON)
	touch $@

.PHONY: venv
venv: $(VENV)/.installed ## create .venv from uv.lock: the projects (editable) and the dev tools

UPGRADE ?=
.PHONY: lock
lock: $(UV) ## update uv.lock after a pyproject changed (UPGRADE=1: newest versions within bounds)
	$(UV) lock $(if $(UPGRADE),--upgrade)
	echo "uv==$(UV_VERSION)" | $(UV) pip compile --quiet --generate-hashes --universal --no-header -o hack/uv.txt -

.PHONY: debian
debian: ## install the Debian packages the tests need, if missing
	@hack/install-debian-packages.sh $(DEBIAN_PACKAGES)

.PHONY: tools
tools: venv ## build (once, cached by version) etcd, kube-*, kubelet, kubectl, kwok, helm, coredns from Go modules
	$(PY) -m devcluster install >/dev/null

.PHONY: deps
deps: venv debian tools ## everything `make test` needs on a fresh machine

# ---- checking ---------------------------------------------------------------------------

.PHONY: lint
lint: venv ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: typecheck
typecheck: venv ## mypy, strict
	$(VENV)/bin/mypy operator/src trainer/src hack/devcluster tests bench

# The trainer image the e2e tests' real nodes run (the tests' own build of it is then a cache
# hit). On a fresh machine it is built while the Go tools compile: the build is mostly downloads
# and one core, the compiler takes both; together they save minutes.
.PHONY: test-image
test-image: venv debian
	$(PY) tests/image_builds.py trainer

# Two pytest workers: the cluster tests (mostly waiting on pods and timeouts) in one, the
# training and unit tests beside them (tests/scheduling.py). PYTEST_WORKERS=0: serially.
PYTEST_WORKERS ?= 2
.PHONY: test
test: venv ## set up what is missing, then lint, type-check and run every test
	$(MAKE) --no-print-directory -j4 --output-sync=target debian tools lint typecheck \
		$(if $(PYTEST_ARGS),,test-image)  # a subset builds it only if a test of it needs it
	# The training in pytest's processes shares the two cores with the cluster's pods: OpenMP
	# threads sleep while they wait (pretrain_operator.launch.ENVIRONMENT says why).
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

# ---- the local control plane ------------------------------------------------------------

NODES ?= 2
.PHONY: cluster-up
cluster-up: deps ## the control plane, kwok and NODES (default 2) real kubelet nodes, in the background (root)
	$(PY) -m devcluster --dir $(CLUSTER_DIR) up --nodes $(NODES)

.PHONY: cluster-down
cluster-down: venv ## stop the local control plane and its real nodes
	$(PY) -m devcluster --dir $(CLUSTER_DIR) down

# ---- the local object store ----------------------------------------------------------------

.PHONY: storage-up
storage-up: venv ## a real S3 server (SeaweedFS) on loopback, in the background; writes .storage/env
	$(PY) -m devcluster --storage-dir .storage storage-up

.PHONY: storage-down
storage-down: venv ## stop it (its data stays in .storage/)
	$(PY) -m devcluster --storage-dir .storage storage-down

# ---- benchmarks ---------------------------------------------------------------------------

BENCH_ARGS ?=
.PHONY: bench
bench: venv tools ## benchmarks, each against its baseline in the same run (BENCHMARKS.md); about 20 min
	if [ "$$(id -u)" = 0 ]; then hack/build-images.sh trainer; fi  # recovery's nodes run it (root)
	$(PY) -m bench $(BENCH_ARGS)

# ---- images -----------------------------------------------------------------------------

.PHONY: image
image: debian ## build the operator and trainer images (docker, else buildah; IMAGES="operator" for one)
	hack/build-images.sh $(IMAGES)

# ---- the whole system on this machine ------------------------------------------------------

.PHONY: demo
demo: deps ## the whole system here: control plane, operator, 2 real nodes, the demo jobs (root)
	hack/build-images.sh trainer
	$(PY) -m devcluster.demo --dir .demo

# ---- generated files and running from source --------------------------------------------

.PHONY: manifests
manifests: venv ## regenerate crds/, the chart's CRDs, dashboards and rules, and docs/api.md
	$(PY) -m pretrain_operator.manifests .

.PHONY: run
run: venv ## run the operator from source against the current KUBECONFIG
	$(PY) -m pretrain_operator $(RUN_ARGS)

.PHONY: clean
clean: cluster-down storage-down ## remove local state (the caches outside the repository stay)
	rm -rf $(VENV) $(CLUSTER_DIR) .demo .storage .mypy_cache .ruff_cache .pytest_cache
