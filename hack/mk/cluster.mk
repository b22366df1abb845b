# The test ground: a real single-node Kubernetes cluster with cert-manager, CoreDNS and Prometheus, built and run
# from the Go module proxy and Debian packages only. See docs/test-ground.md.

CLUSTER_KUBECONFIG := $(TRELLIS_CACHE)/cluster/kubeconfig
E2E_FLAGS ?=
E2E_TIMEOUT ?= 60m

##@ Cluster

.PHONY: cluster-up
cluster-up: ## Start the local single-node cluster (root; builds what it needs; kubeconfig: $TRELLIS_CACHE/cluster/kubeconfig).
	hack/cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop the cluster and remove everything it left on the host (processes, mounts, netns, routes, sysctls).
	hack/cluster/down.sh

.PHONY: cluster-status
cluster-status: ## Show the cluster's daemons, node and pods.
	hack/cluster/status.sh

.PHONY: images
images: ## Build trellis.io/<name>:dev images of every cmd/<name> and test/apps/<name>, and load them into the cluster.
	hack/cluster/images.sh project

.PHONY: test-e2e
test-e2e: $(KUSTOMIZE) ## Run the end-to-end suites on the cluster (starts it if needed and stops what it started).
	$(GO) test -tags e2e -count=1 -p 1 -v -timeout $(E2E_TIMEOUT) ./test/e2e/... $(E2E_FLAGS)
