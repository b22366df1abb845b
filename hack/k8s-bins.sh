#!/usr/bin/env bash
# Builds the pinned Kubernetes and etcd binaries from the Go module proxy into a cache outside the clone,
# so later clones on the same machine reuse them. Prints the cache folder on stdout when done.
#
#   hack/k8s-bins.sh [binary...]     default: kube-apiserver etcd (what envtest needs)
#   hack/k8s-bins.sh all             every binary the test-ground cluster needs (Kubernetes, etcd, CoreDNS)
set -euo pipefail
KUBE_VERSION=v1.34.4
ETCD_VERSION=v3.6.4
COREDNS_VERSION=v1.12.4
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TRELLIS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trellis}/k8s-$KUBE_VERSION
mkdir -p "$cache"

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(kube-apiserver etcd)
[ "${want[0]}" != all ] || want=(kube-apiserver etcd kubectl kube-controller-manager kube-scheduler kubelet kube-proxy coredns)

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=34 -X k8s.io/component-base/version.gitTreeState=clean \
-X k8s.io/component-base/version.buildDate=2026-01-01T00:00:00Z -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"

n=0; total=0
for b in "${want[@]}"; do [ -x "$cache/$b" ] || total=$((total + 1)); done
for b in "${want[@]}"; do
  [ -x "$cache/$b" ] && continue
  n=$((n + 1)); start=$(date +%s)
  case $b in
    etcd)
      echo ">> [$n/$total] building etcd $ETCD_VERSION (cold: ~3 min on 2 cores)" >&2
      (cd "$root/hack/tools/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$cache/.etcd.tmp" go.etcd.io/etcd/server/v3) ;;
    coredns)
      echo ">> [$n/$total] building coredns $COREDNS_VERSION (cold: ~5.5 min on 2 cores)" >&2
      rm -rf "$cache/.coredns-gobin"
      (cd "$cache" && GOBIN="$cache/.coredns-gobin" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" \
        "github.com/coredns/coredns@$COREDNS_VERSION")
      mv "$cache/.coredns-gobin/coredns" "$cache/.coredns.tmp" && rmdir "$cache/.coredns-gobin" ;;
    *)
      echo ">> [$n/$total] building $b $KUBE_VERSION (cold: kube-apiserver ~12 min, others ~1-3 min on 2 cores)" >&2
      (cd "$root/hack/tools/k8s" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$cache/.$b.tmp" "k8s.io/kubernetes/cmd/$b") ;;
  esac
  mv "$cache/.$b.tmp" "$cache/$b"
  echo ">> [$n/$total] $b built in $(( $(date +%s) - start ))s" >&2
done
echo "$cache"
