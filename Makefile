# Trellis — a service mesh for Kubernetes.
# `make help` lists the targets. Area-specific targets live in hack/mk/*.mk and are included below.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

ROOT := $(CURDIR)
BIN := $(ROOT)/bin
export PATH := $(BIN):$(PATH)
# Cache shared by every clone on this machine (Kubernetes binaries, cert-manager, images).
TRELLIS_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/trellis
export TRELLIS_CACHE
KUBE_VERSION := v1.34.4

GO ?= go
GOFLAGS_TEST ?=

# Pinned tool versions (built from the Go module proxy into bin/).
CONTROLLER_GEN_VERSION := v0.23.0
GOLANGCI_LINT_VERSION := v2.15.0
KUSTOMIZE_VERSION := v5.8.2

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z0-9_.-]+:.*?##/ { printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

-include hack/mk/*.mk

##@ Test

.PHONY: test
test: test-go test-proxy test-e2e ## Run every test: unit + integration (real kube-apiserver/etcd), data plane with real peers, e2e on the local cluster.
