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

##@ Demo

.PHONY: demo
demo: $(KUSTOMIZE) ## Run the demo (root): the local cluster, Trellis installed, the shop application meshed with mTLS, its traffic and `trellis check`.
	$(GO) run ./hack/demo $(DEMO_FLAGS)

.PHONY: demo-control-plane
demo-control-plane: k8s-test-bins cert-manager-bins ## Run the control plane alone on a bare kube-apiserver (no root, no cluster).
	$(GO) run ./hack/demo -control-plane $(DEMO_FLAGS)

##@ Development

CONTROLLER_GEN := $(BIN)/controller-gen
GOLANGCI_LINT := $(BIN)/golangci-lint
KUSTOMIZE := $(BIN)/kustomize

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code for the API types.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs, RBAC and webhook manifests under config/.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=manager-role paths=./controllers/... paths=./internal/... output:rbac:artifacts:config=config/rbac

.PHONY: fmt
fmt: ## Format the code (gofmt).
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...

.PHONY: verify
verify: generate manifests ## Fail when generated files are stale, the code is unformatted or go mod tidy would change anything.
	$(GO) mod tidy
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt would change:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	@git diff --exit-code -- go.mod go.sum api config || { echo "generated files or go.mod are stale: run 'make generate manifests' and 'go mod tidy', then commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api config)" || { echo "untracked generated files:"; git status --porcelain -- api config; exit 1; }

.PHONY: build
build: ## Build every binary into bin/.
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/...

##@ Tools

$(CONTROLLER_GEN):
	GOBIN=$(BIN) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)

$(GOLANGCI_LINT):
	GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

$(KUSTOMIZE):
	GOBIN=$(BIN) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

.PHONY: tools
tools: $(CONTROLLER_GEN) $(GOLANGCI_LINT) $(KUSTOMIZE) ## Build the pinned development tools into bin/.

-include hack/mk/*.mk

##@ Test

.PHONY: test
test: test-go test-proxy test-proxy-init test-bundle bundle-verify bundle-validate test-e2e ## Run every test: unit + integration (real kube-apiserver/etcd), data plane with real peers, e2e on the local cluster.

# Packages test-go covers; the data plane (test-proxy) and e2e (test-e2e) have their own targets.
GO_TEST_PKGS = $$($(GO) list ./... | grep -v -e /proxy -e /internal/proxyconfig -e /test/e2e -e /test/dataplane)
# Packages that run in the proxy process and get the race detector here too.
GO_RACE_PKGS = ./internal/identity/... ./internal/spiffe/...

.PHONY: test-go
test-go: k8s-test-bins cert-manager-bins $(KUSTOMIZE) ## Unit and integration tests (a real kube-apiserver and etcd built from source).
	KUBEBUILDER_ASSETS=$$(hack/k8s-bins.sh kube-apiserver etcd kubectl) $(GO) test -count=1 $(GOFLAGS_TEST) $(GO_TEST_PKGS)
	KUBEBUILDER_ASSETS=$$(hack/k8s-bins.sh kube-apiserver etcd kubectl) $(GO) test -count=1 -race $(GOFLAGS_TEST) $(GO_RACE_PKGS)

.PHONY: cert-manager-bins
cert-manager-bins: ## Build cert-manager's controller, webhook and cainjector and its CRDs into the cache (once per machine).
	hack/cluster/cert-manager.sh build

.PHONY: k8s-test-bins
k8s-test-bins: ## Build kube-apiserver, etcd and kubectl from source into the cache (once per machine).
	hack/k8s-bins.sh kube-apiserver etcd kubectl >/dev/null
