# proxy-init: the traffic redirect library (internal/redirect) and its init-container binary. See docs/proxy-init.md.

PROXY_INIT_TEST_PKGS := ./internal/redirect/... ./cmd/proxy-init/...
PROXY_INIT_TEST_TIMEOUT ?= 10m
PROXY_INIT_TEST_FLAGS ?=
# Commands the real tests run in network namespaces, and the Debian packages that provide them.
PROXY_INIT_APT_COMMANDS := ip:iproute2 nft:nftables iptables-restore:iptables ip6tables-restore:iptables setpriv:util-linux nsenter:util-linux

##@ proxy-init

.PHONY: proxy-init-apt
proxy-init-apt: ## Install the Debian packages proxy-init's tests need (iproute2, nftables, iptables, util-linux) if missing.
	@PATH="$$PATH:/usr/sbin:/sbin"; missing=""; for pair in $(PROXY_INIT_APT_COMMANDS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run as root to install them)"; exit 0; fi; \
	  echo "installing:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

.PHONY: test-proxy-init
test-proxy-init: proxy-init-apt ## Test proxy-init with the race detector: plan and flags, then real rules and traffic in network namespaces (root).
	PATH=$$PATH:/usr/sbin:/sbin $(GO) test -race -count=1 -timeout $(PROXY_INIT_TEST_TIMEOUT) $(PROXY_INIT_TEST_FLAGS) $(PROXY_INIT_TEST_PKGS)

.PHONY: proxy-init
proxy-init: ## Build the static proxy-init binary into bin/.
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/proxy-init ./cmd/proxy-init
