# The OLM bundle: bundle/ and bundle.Dockerfile, generated from config/manifests (the base CSV, config/default and
# config/samples) by the tools module hack/tools/bundle, and validated with github.com/operator-framework/api, the
# library operator-sdk uses. See docs/olm.md.

# The operator version the bundle describes (the CSV is trellis.v$(VERSION)).
VERSION ?= 0.1.0
# The CSV's createdAt annotation. Fixed, so that the bundle is reproducible: set it when VERSION changes.
BUNDLE_CREATED_AT ?= 2026-11-26T00:00:00Z
BUNDLE_CHANNELS ?= alpha
BUNDLE_DEFAULT_CHANNEL ?= alpha
# The CSV this release upgrades (e.g. trellis.v0.1.0); empty for the first release.
BUNDLE_REPLACES ?=
# Where the release images are published: the bundle names $(BUNDLE_IMAGE_REGISTRY)/<name>:$(BUNDLE_IMAGE_TAG).
BUNDLE_IMAGE_REGISTRY ?= ghcr.io/trellis-mesh
BUNDLE_IMAGE_TAG ?= v$(VERSION)
# cert-manager versions Trellis works with (an olm.package dependency on the community catalog's "cert-manager");
# empty builds a bundle without the dependency (docs/olm.md).
BUNDLE_CERT_MANAGER_VERSIONS ?= >=1.11.0 <2.0.0
# Kubernetes version the removed-APIs validators check against.
BUNDLE_K8S_VERSION ?= 1.34
SCORECARD_TEST_IMAGE ?= quay.io/operator-framework/scorecard-test:v1.42.0

BUNDLE_TOOLS := hack/tools/bundle
BUNDLE_GEN := $(BIN)/bundle-gen
BUNDLE_VALIDATE := $(BIN)/bundle-validate
BUNDLE_GEN_FLAGS = -manifests config/manifests -icon config/manifests/icon.svg \
  -version $(VERSION) -created-at $(BUNDLE_CREATED_AT) \
  -channels $(BUNDLE_CHANNELS) -default-channel $(BUNDLE_DEFAULT_CHANNEL) \
  $(if $(BUNDLE_REPLACES),-replaces $(BUNDLE_REPLACES)) \
  -image trellis.io/manager=$(BUNDLE_IMAGE_REGISTRY)/manager:$(BUNDLE_IMAGE_TAG) \
  -image trellis.io/proxy=$(BUNDLE_IMAGE_REGISTRY)/proxy:$(BUNDLE_IMAGE_TAG) \
  -image trellis.io/proxy-init=$(BUNDLE_IMAGE_REGISTRY)/proxy-init:$(BUNDLE_IMAGE_TAG) \
  $(if $(BUNDLE_CERT_MANAGER_VERSIONS),-requires 'cert-manager=$(BUNDLE_CERT_MANAGER_VERSIONS)') \
  -scorecard-image $(SCORECARD_TEST_IMAGE)

##@ Bundle

# Always rebuilt (go build is incremental), so a change in hack/tools/bundle is never run stale.
.PHONY: $(BUNDLE_GEN) $(BUNDLE_VALIDATE)
$(BUNDLE_GEN):
	cd $(BUNDLE_TOOLS) && GOWORK=off $(GO) build -o $(BUNDLE_GEN) ./cmd/gen
$(BUNDLE_VALIDATE):
	cd $(BUNDLE_TOOLS) && GOWORK=off $(GO) build -o $(BUNDLE_VALIDATE) ./cmd/validate

.PHONY: bundle
bundle: $(BUNDLE_GEN) ## Generate the OLM bundle (bundle/, bundle.Dockerfile) from config/manifests; VERSION=0.1.0 by default.
	$(BUNDLE_GEN) $(BUNDLE_GEN_FLAGS) -out bundle -dockerfile bundle.Dockerfile

.PHONY: bundle-verify
bundle-verify: $(BUNDLE_GEN) ## Fail when bundle/ or bundle.Dockerfile differs from what 'make bundle' generates.
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(BUNDLE_GEN) $(BUNDLE_GEN_FLAGS) -out "$$tmp/bundle" -dockerfile "$$tmp/bundle.Dockerfile" && \
	  if ! diff -ru bundle "$$tmp/bundle" || ! diff -u bundle.Dockerfile "$$tmp/bundle.Dockerfile"; then \
	    echo "bundle/ is stale: run 'make bundle VERSION=$(VERSION)' and commit bundle/ and bundle.Dockerfile"; exit 1; \
	  fi

.PHONY: bundle-validate
bundle-validate: $(BUNDLE_VALIDATE) ## Validate bundle/ like operator-sdk bundle validate --select-optional suite=operatorframework.
	$(BUNDLE_VALIDATE) -dir bundle -dockerfile bundle.Dockerfile -k8s-version $(BUNDLE_K8S_VERSION)

.PHONY: test-bundle
test-bundle: ## Test the bundle generator and validator: generate from config/, validate, check nothing was lost.
	cd $(BUNDLE_TOOLS) && GOWORK=off $(GO) test -count=1 ./...
