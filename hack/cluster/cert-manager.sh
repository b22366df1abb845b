#!/usr/bin/env bash
# cert-manager for the test ground.
#
#   cert-manager.sh build     controller, webhook, cainjector $CERT_MANAGER_VERSION from the tools module
#                             hack/tools/cert-manager, and its CRDs (deploy/crds of that module, Helm template lines
#                             replaced) -> $TRELLIS_CACHE/cert-manager-<version>/ (kept; built when missing)
#   cert-manager.sh install   applies the CRDs and hack/cluster/manifests/cert-manager.yaml, waits until the
#                             webhook answers
. "$(dirname "$0")/lib.sh"

build() {
  mkdir -p "$CMBIN"
  local c n=0 start
  for c in controller webhook cainjector; do
    [ -x "$CMBIN/$c" ] && continue
    n=$((n + 1)); start=$(date +%s)
    log "cert-manager: building $c $CERT_MANAGER_VERSION (cold: ~3 min for all three on 2 cores)"
    (cd "$ROOT/hack/tools/cert-manager" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$CMBIN/.$c.tmp" \
      "github.com/cert-manager/cert-manager/cmd/$c")
    mv "$CMBIN/.$c.tmp" "$CMBIN/$c"
    log "cert-manager: $c built in $(($(date +%s) - start))s"
  done
  if [ ! -f "$CMBIN/crds.yaml" ]; then
    local dir
    dir=$(cd "$ROOT/hack/tools/cert-manager" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
    for c in "$dir"/deploy/crds/crd-*.yaml; do
      echo "---"
      sed -e "s/'{{ template \"cert-manager.name\" . }}'/cert-manager/" -e "s/'{{ .Release.Name }}'/cert-manager/" \
        -e '/{{/d' "$c"
    done >"$CMBIN/.crds.tmp"
    mv "$CMBIN/.crds.tmp" "$CMBIN/crds.yaml"
    log "cert-manager: CRDs written to $CMBIN/crds.yaml"
  fi
}

install() {
  kc apply --server-side -f "$CMBIN/crds.yaml" >/dev/null
  kc wait --for=condition=Established --timeout=60s -f "$CMBIN/crds.yaml" >/dev/null
  kc apply --server-side -f "$HACK/manifests/cert-manager.yaml" >/dev/null
  log "cert-manager: applied; waiting for controller, cainjector and webhook"
  local d
  for d in cert-manager cert-manager-cainjector cert-manager-webhook; do
    kc -n cert-manager rollout status "deploy/$d" --timeout=180s >/dev/null
  done
  # The webhook is usable once cainjector has put its CA into the webhook configurations.
  wait_for "cert-manager webhook CA injected" 120 sh -c \
    "kubectl --kubeconfig '$KUBECONFIG_PATH' get validatingwebhookconfiguration cert-manager-webhook \
      -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | grep -q ."
  # ...and a dry-run create passes through it.
  wait_for "cert-manager webhook answering" 60 sh -c "cat <<'Y' | kubectl --kubeconfig '$KUBECONFIG_PATH' create --dry-run=server -f -
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: webhook-check, namespace: default}
spec: {selfSigned: {}}
Y"
}

case ${1:-} in
  build) build ;;
  install) install ;;
  *) echo "usage: $0 build|install" >&2; exit 2 ;;
esac
