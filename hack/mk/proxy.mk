# The data-plane proxy: tests with real peers, the side-by-side benchmark and fuzzing. See docs/proxy.md.

FORTIO_VERSION := v1.68.2
# h2spec has no go.mod, so its v2 tags are "+incompatible" versions of the module.
H2SPEC_VERSION := v2.2.1+incompatible
GRPC_INTEROP_VERSION := v1.85.0

FORTIO := $(BIN)/fortio
H2SPEC := $(BIN)/h2spec
INTEROP_CLIENT := $(BIN)/interop-client
INTEROP_SERVER := $(BIN)/interop-server

PROXY_TEST_PKGS := ./proxy/... ./internal/proxyconfig/... ./test/dataplane/...
PROXY_TEST_TIMEOUT ?= 20m
PROXY_TEST_FLAGS ?=
# Commands the proxy's tests and benchmark need, and the Debian packages that provide them (tshark checks mesh TLS on
# the wire in test/dataplane).
PROXY_APT_COMMANDS := curl:curl haproxy:haproxy ip:iproute2 iptables:iptables ip6tables:iptables setpriv:util-linux taskset:util-linux tshark:tshark
BENCH_ROUNDS ?= 3
BENCH_DURATION ?= 10s
FUZZ_TIME ?= 30s

##@ Proxy

$(FORTIO):
	GOBIN=$(BIN) $(GO) install fortio.org/fortio@$(FORTIO_VERSION)

$(H2SPEC):
	GOBIN=$(BIN) $(GO) install github.com/summerwind/h2spec/cmd/h2spec@$(H2SPEC_VERSION)

# The interop binaries are named client and server upstream; they are installed under distinct names.
$(INTEROP_CLIENT) $(INTEROP_SERVER):
	@tmp=$$(mktemp -d) && \
	  GOBIN=$$tmp $(GO) install google.golang.org/grpc/interop/client@$(GRPC_INTEROP_VERSION) \
	  google.golang.org/grpc/interop/server@$(GRPC_INTEROP_VERSION) && \
	  mkdir -p $(BIN) && mv $$tmp/client $(INTEROP_CLIENT) && mv $$tmp/server $(INTEROP_SERVER) && rm -rf $$tmp

.PHONY: proxy-apt
proxy-apt: ## Install the Debian packages the proxy's tests need (curl, haproxy, iproute2, iptables, util-linux, tshark) if missing.
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=""; for pair in $(PROXY_APT_COMMANDS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run as root to install them)"; exit 0; fi; \
	  echo "installing:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

.PHONY: proxy-peers
proxy-peers: proxy-apt $(FORTIO) $(H2SPEC) $(INTEROP_CLIENT) $(INTEROP_SERVER) ## Install the proxy's real test peers: apt packages and pinned Go tools in bin/.

.PHONY: test-proxy
test-proxy: proxy-peers k8s-test-bins ## Test the proxy with the race detector and real peers: curl, grpc-go interop, h2spec, mesh TLS and rotation, the API config source on a real kube-apiserver, netns interception (root).
	PATH=$(BIN):$$PATH:/usr/sbin:/sbin $(GO) test -race -count=1 -timeout $(PROXY_TEST_TIMEOUT) $(PROXY_TEST_FLAGS) $(PROXY_TEST_PKGS)

.PHONY: bench-proxy
bench-proxy: proxy-peers ## Benchmark direct vs Trellis proxy vs HAProxy (fortio, root; table in docs/benchmarks.md).
	$(GO) build -o $(BIN)/proxy ./cmd/proxy
	$(GO) build -o $(BIN)/proxybench ./hack/bench/proxybench
	$(BIN)/proxybench -proxy $(BIN)/proxy -fortio $(FORTIO) -rounds $(BENCH_ROUNDS) -duration $(BENCH_DURATION) \
	  -out $(ROOT)/.tmp/bench-proxy.md
	@echo "table written to .tmp/bench-proxy.md; copy it into docs/benchmarks.md"

.PHONY: bench-proxy-go
bench-proxy-go: ## Run the proxy's Go benchmarks (detection, TCP copy, HTTP path with and without retry policies, wired picks, retry budget, circuit breaker) with allocation counts.
	$(GO) test -run '^$$' -bench . -benchmem ./proxy/... ./internal/proxyconfig/...

.PHONY: fuzz-proxy
fuzz-proxy: ## Run each proxy fuzz target for FUZZ_TIME (default 30s).
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZ_TIME) ./internal/proxyconfig/
	$(GO) test -run '^$$' -fuzz '^FuzzClassify$$' -fuzztime $(FUZZ_TIME) ./proxy/detect/
	$(GO) test -run '^$$' -fuzz '^FuzzReadHead$$' -fuzztime $(FUZZ_TIME) ./proxy/h1/
	$(GO) test -run '^$$' -fuzz '^FuzzIsMeshHello$$' -fuzztime $(FUZZ_TIME) ./proxy/mtls/
	$(GO) test -run '^$$' -fuzz '^FuzzParseLabels$$' -fuzztime $(FUZZ_TIME) ./proxy/reload/
