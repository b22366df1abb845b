#!/usr/bin/env bash
# Brings the test ground up: a single-node Kubernetes cluster in network namespace $NETNS, with CoreDNS,
# cert-manager and Prometheus. Idempotent: a healthy cluster is left as it is; a broken one is torn down first.
# The admin kubeconfig is written to $KUBECONFIG_PATH.
. "$(dirname "$0")/lib.sh"
need_root
lock
trap 'log "cluster-up failed: component logs are in $LOGS; make cluster-down removes what was started"' ERR

healthy() {
  local d
  for d in "${DAEMONS[@]}"; do running "$d" || return 1; done
  kc get --raw /readyz >/dev/null 2>&1
}
if healthy; then
  log "cluster already up; kubeconfig: $KUBECONFIG_PATH"
  exit 0
fi
if compgen -G "$RUN/*.pid" >/dev/null; then
  log "found a partial cluster: tearing it down first"
  "$HACK/down.sh"
elif [ -e "/var/run/netns/$NETNS" ]; then
  die "network namespace $NETNS exists but was not started from $STATE (another TRELLIS_CACHE, or a crash): \
run 'make cluster-down' with the TRELLIS_CACHE that started it, or 'hack/cluster/down.sh' to clear it"
fi

# 1. host packages (Debian)
pkgs=(containerd runc containernetworking-plugins iptables conntrack openssl curl)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "packages: installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  # where an init system started the packaged services, stop them: the cluster runs its own
  [ ! -x /etc/init.d/containerd ] || ! /etc/init.d/containerd status >/dev/null 2>&1 ||
    /etc/init.d/containerd stop >/dev/null 2>&1 || true
fi

# 2. binaries and infrastructure images (cached outside the clone; only the first run builds them)
log "binaries: Kubernetes $KUBE_VERSION, etcd, CoreDNS, cert-manager, Prometheus (first build ~22 min on 2 cores)"
"$ROOT/hack/k8s-bins.sh" all >/dev/null
mkdir -p "$ROOT/bin" && ln -sf "$KBIN/kubectl" "$ROOT/bin/kubectl" # make puts bin/ on PATH
"$HACK/cert-manager.sh" build
"$HACK/prometheus.sh" build
"$HACK/images.sh" infra
log "binaries and images ready"

# 3. PKI, kubeconfigs, configuration
mkdir -p "$DATA" "$RUN" "$LOGS" "$CFG/cni"
"$HACK/pki.sh"
render "$HACK/config/containerd.toml" "$CFG/containerd.toml"
render "$HACK/config/10-bridge.conflist" "$CFG/cni/10-bridge.conflist"
render "$HACK/config/kubelet.yaml" "$CFG/kubelet.yaml"
render "$HACK/config/kube-proxy.yaml" "$CFG/kube-proxy.yaml"
cp "$HACK/config/resolv.conf" "$CFG/resolv.conf"

# 4. host state the cluster changes: remember it so down.sh restores it exactly
[ -f "$RUN/sysctl.orig" ] || sysctl -e "${HOST_SYSCTLS[@]}" >"$RUN/sysctl.orig"
[ -f "$RUN/cni-netns.before" ] || ip netns list | awk '/^cni-/ {print $1}' >"$RUN/cni-netns.before"
if [ ! -f "$RUN/host-paths.created" ]; then
  for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p"; done >"$RUN/host-paths.created"
fi

# 5. the node's network namespace, joined to the host by a veth pair; host routes to pods and services
for r in "$POD_CIDR" "$SVC_CIDR" "${HOST_IP%.*}.0/24"; do
  if ip route show "$r" | grep -q . || ip route show match "${r%/*}" | grep -qv default; then
    die "host already routes $r (another network uses it); the test ground needs it"
  fi
done
ip netns add "$NETNS"
ip -n "$NETNS" link set lo up
ip link add "$HOST_IF" type veth peer name eth0 netns "$NETNS"
ip addr add "$HOST_IP/24" dev "$HOST_IF"
ip link set "$HOST_IF" up
ip -n "$NETNS" addr add "$NODE_IP/24" dev eth0
ip -n "$NETNS" link set eth0 up
# no gateway: the node has no way out beyond the host side of the veth
ip -n "$NETNS" route add default dev eth0
ip route add "$POD_CIDR" via "$NODE_IP" dev "$HOST_IF"
ip route add "$SVC_CIDR" via "$NODE_IP" dev "$HOST_IF"
"${IN_NODE[@]}" sysctl -qw net.ipv4.ip_forward=1
"${IN_NODE[@]}" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null ||
  log "warning: net.bridge.bridge-nf-call-iptables not settable in the node namespace (hairpin to a ClusterIP may fail)"
log "network: node $NODE_IP in netns $NETNS, host side $HOST_IF $HOST_IP"

# 6. containerd and images
start containerd containerd --config "$CFG/containerd.toml"
wait_for containerd 30 ctr_ version
"$HACK/images.sh" load

# 7. control plane
start etcd etcd --name node --data-dir "$DATA/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster node=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
  --unsafe-no-fsync --snapshot-count 10000
wait_for etcd 30 "${IN_NODE[@]}" curl -sf http://127.0.0.1:2381/health

start kube-apiserver kube-apiserver \
  --etcd-servers=http://127.0.0.1:2379 \
  --advertise-address="$NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
  --service-cluster-ip-range="$SVC_CIDR" \
  --client-ca-file="$PKI/ca.crt" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true --profiling=false --cert-dir="$RUN/apiserver-certs"
wait_for kube-apiserver 120 kc get --raw /readyz

start kube-controller-manager kube-controller-manager \
  --kubeconfig="$CFG/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$CFG/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$CFG/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SVC_CIDR" --profiling=false
start kube-scheduler kube-scheduler \
  --kubeconfig="$CFG/scheduler.kubeconfig" \
  --authentication-kubeconfig="$CFG/scheduler.kubeconfig" --authorization-kubeconfig="$CFG/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false

# 8. node: kubelet's cgroup root /$NODE must exist in every hierarchy (cgroup v1; a single one on v2)
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  mkdir -p "/sys/fs/cgroup/$NODE"
else
  for h in /sys/fs/cgroup/*/; do [ -f "${h}cgroup.procs" ] && mkdir -p "$h$NODE"; done
  if [ -d "/sys/fs/cgroup/cpuset/$NODE" ]; then # a new v1 cpuset starts with no CPUs and no memory nodes
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$NODE/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$NODE/cpuset.mems"
  fi
fi
start kubelet kubelet --config="$CFG/kubelet.yaml" --kubeconfig="$CFG/kubelet.kubeconfig" \
  --root-dir="$DATA/kubelet" --hostname-override="$NODE" --node-ip="$NODE_IP" --v=1
start kube-proxy kube-proxy --config="$CFG/kube-proxy.yaml"
wait_for "node $NODE Ready" 180 sh -c \
  "kubectl --kubeconfig '$KUBECONFIG_PATH' get node '$NODE' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
wait_for "default service account" 60 kc get serviceaccount default

# 9. add-ons: CoreDNS, cert-manager, Prometheus
render "$HACK/manifests/coredns.yaml" "$CFG/coredns.yaml"
kc apply --server-side -f "$CFG/coredns.yaml" -f "$HACK/manifests/prometheus-rbac.yaml" >/dev/null
"$HACK/cert-manager.sh" install
kc -n kube-system rollout status deploy/coredns --timeout=120s >/dev/null
log "coredns: ready at $DNS_SVC_IP"
"$HACK/prometheus.sh" up

log "cluster up: kubectl --kubeconfig $KUBECONFIG_PATH get nodes; Prometheus: http://$PROM_ADDR"
