# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file
# Shared settings and helpers for the test-ground scripts (sourced, not run).
#
# The test ground is one single-node Kubernetes cluster per machine. Its node lives in the network namespace
# $NETNS; a veth pair joins it to the host ($HOST_IF with $HOST_IP on the host side, eth0 with $NODE_IP in the
# node), and host routes for the pod and service ranges point at the node, so the API server, pods, ClusterIPs
# and Prometheus are all reachable from the host. Everything the cluster writes lives under $STATE.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HACK=$ROOT/hack/cluster
KUBE_VERSION=v1.34.4
COREDNS_VERSION=v1.12.4
CERT_MANAGER_VERSION=v1.11.5
PROMETHEUS_VERSION=v3.16.0                       # module github.com/prometheus/prometheus v0.316.0
CACHE=${TRELLIS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trellis}
KBIN=$CACHE/k8s-$KUBE_VERSION                    # Kubernetes, etcd and CoreDNS binaries (hack/k8s-bins.sh)
CMBIN=$CACHE/cert-manager-$CERT_MANAGER_VERSION  # cert-manager binaries and CRDs
PROMBIN=$CACHE/prometheus-$PROMETHEUS_VERSION     # Prometheus server
IMAGES=$CACHE/images                             # infrastructure image tarballs (pause, CoreDNS, cert-manager)
PROJECT_IMAGES=$ROOT/.tmp/images                 # this clone's images (make images)
STATE=$CACHE/cluster
PKI=$STATE/pki
CFG=$STATE/config
DATA=$STATE/data
RUN=$STATE/run
LOGS=$STATE/logs
KUBECONFIG_PATH=$STATE/kubeconfig                # admin kubeconfig, works from the host and from the node

NETNS=trellis-node
NODE=trellis-node
HOST_IF=trellis0
HOST_IP=10.200.0.1
NODE_IP=10.200.0.10
POD_CIDR=10.244.0.0/24
SVC_CIDR=10.96.0.0/16
API_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10
PROM_ADDR=$NODE_IP:9090

IMAGE_REPO=trellis.io
PAUSE_IMAGE=$IMAGE_REPO/pause:dev
COREDNS_IMAGE=$IMAGE_REPO/coredns:$COREDNS_VERSION

# Host sysctls that kubelet rewrites at start (setupKernelTunables); saved on up, restored on down.
HOST_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes)
# Fixed host paths that kubelet, containerd and the CNI plugins use whatever their configuration says.
HOST_PATHS=(/run/containerd /var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /opt/cni /etc/cni
  /run/netns)

# Daemons in start order; down stops them in reverse.
DAEMONS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy prometheus)

IN_NODE=(nsenter "--net=/var/run/netns/$NETNS")
export PATH=$KBIN:$ROOT/bin:$PATH

T0=${T0:-$(date +%s.%N)}
export T0
# log prints a progress line with the seconds since the command started.
log() { printf '[%6.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "the test ground needs root (network namespaces, mounts, containerd)"; }

# kc runs kubectl as cluster admin.
kc() { kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }
ctr_() { ctr -a "$RUN/containerd/containerd.sock" -n k8s.io "$@"; }

# wait_for <what> <seconds> <command...>: polls the command every 0.5 s.
wait_for() {
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 2; i++)); do
    if "$@" >/dev/null 2>&1; then log "$what: ready"; return 0; fi
    sleep 0.5
  done
  log "timed out after ${secs}s waiting for $what"; return 1
}

pid_of() { local f=$RUN/$1.pid; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }
running() { pid_of "$1" >/dev/null; }

# start <name> <command...>: starts a daemon in its own session inside the node's network namespace.
start() {
  local n=$1; shift
  setsid "${IN_NODE[@]}" "$@" >"$LOGS/$n.log" 2>&1 </dev/null 9>&- & # 9: the lock must not outlive the script
  echo $! >"$RUN/$n.pid"
}

# render <template> <output>: copies a file from hack/cluster/config, replacing @NAME@ with $NAME.
render() {
  local v args=()
  for v in STATE PKI CFG DATA RUN LOGS NODE NODE_IP HOST_IP POD_CIDR SVC_CIDR DNS_SVC_IP PAUSE_IMAGE COREDNS_IMAGE PROM_ADDR; do
    args+=(-e "s|@$v@|${!v}|g")
  done
  sed "${args[@]}" "$1" >"$2"
}

# lock serializes cluster-up and cluster-down across shells and clones (down.sh called by up.sh inherits it).
lock() {
  [ -z "${TRELLIS_CLUSTER_LOCKED:-}" ] || return 0
  mkdir -p "$CACHE"
  exec 9>"$CACHE/cluster.lock"
  flock -n 9 || {
    log "waiting for another cluster-up or cluster-down to finish"
    flock -w 900 9 || die "$CACHE/cluster.lock is still held after 15 min"
  }
  export TRELLIS_CLUSTER_LOCKED=1
}
