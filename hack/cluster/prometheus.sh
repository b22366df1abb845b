#!/usr/bin/env bash
# Prometheus for the test ground.
#
#   prometheus.sh build   Prometheus $PROMETHEUS_VERSION from the tools module hack/tools/prometheus
#                         -> $TRELLIS_CACHE/prometheus-<version>/prometheus (kept; built when missing).
#                         Debian's package is built without Kubernetes service discovery, so it cannot find pods.
#   prometheus.sh up      runs it in the node's network namespace on http://$PROM_ADDR, scraping annotated pods
#   prometheus.sh down    stops it
. "$(dirname "$0")/lib.sh"

case ${1:-} in
  build)
    [ -x "$PROMBIN/prometheus" ] && exit 0
    mkdir -p "$PROMBIN"
    log "prometheus: building $PROMETHEUS_VERSION with Kubernetes discovery only (cold: ~5 min on 2 cores)"
    start=$(date +%s)
    # remove_all_sd,enable_kubernetes_sd: leave out the cloud discoveries and their SDKs (half the build)
    (cd "$ROOT/hack/tools/prometheus" && CGO_ENABLED=0 go build -trimpath -tags remove_all_sd,enable_kubernetes_sd \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}" \
      -o "$PROMBIN/.prometheus.tmp" github.com/prometheus/prometheus/cmd/prometheus)
    mv "$PROMBIN/.prometheus.tmp" "$PROMBIN/prometheus"
    log "prometheus: built in $(($(date +%s) - start))s"
    ;;
  up)
    running prometheus && exit 0
    render "$HACK/config/prometheus.yml" "$CFG/prometheus.yml"
    start prometheus "$PROMBIN/prometheus" --config.file="$CFG/prometheus.yml" \
      --storage.tsdb.path="$DATA/prometheus" --web.listen-address="$PROM_ADDR" --web.enable-lifecycle
    wait_for "prometheus on http://$PROM_ADDR" 60 curl -sf "http://$PROM_ADDR/-/ready"
    ;;
  down)
    p=$(pid_of prometheus) || exit 0
    kill "$p"
    for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null || true
    rm -f "$RUN/prometheus.pid"
    ;;
  *) echo "usage: $0 build|up|down" >&2; exit 2 ;;
esac
