#!/usr/bin/env bash
# Tears the test ground down: stops every process it started (by PID), removes containers, mounts, the network
# namespaces and host routes, restores the host sysctls kubelet changed and the fixed host paths it created, and
# deletes the cluster's data. Keeps the PKI and the cached binaries and images. Safe to run when nothing runs.
. "$(dirname "$0")/lib.sh"
need_root
lock

# stop <name...>: SIGTERM to all, SIGKILL to those still running after 10 s
stop() {
  local n p pids=() i
  for n in "$@"; do
    if p=$(pid_of "$n"); then pids+=("$p"); kill "$p" 2>/dev/null || true; fi
    rm -f "$RUN/$n.pid"
  done
  for ((i = 0; i < 50; i++)); do
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && break; p=; done
    [ -z "${p:-}" ] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ ${#pids[@]} -eq 0 ] || log "stopped $*"
}

stop prometheus kube-proxy kubelet

# containers: kill every task while containerd still runs, then remove sandboxes' network namespaces
if running containerd; then
  for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  for ((i = 0; i < 20; i++)); do
    [ -z "$(ctr_ tasks ls -q 2>/dev/null | head -1)" ] && break
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
  done
  log "removed all containers"
fi
stop kube-scheduler kube-controller-manager kube-apiserver
stop etcd containerd
# shims of this containerd outlive it; they are found by the socket path they were started with
for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $RUN/containerd/containerd.sock" || true); do
  kill -9 "$p" 2>/dev/null || true
done
# container processes left by killed shims (their cgroups are below the node's cgroup root)
{ find /sys/fs/cgroup/"$NODE" /sys/fs/cgroup/*/"$NODE" -name cgroup.procs -exec cat {} + 2>/dev/null || true; } |
  sort -u | while read -r p; do kill -9 "$p" 2>/dev/null || true; done

# mounts below the cluster's folders and the fixed paths kubelet and containerd use (deepest first)
umount_below() {
  local m
  for m in $(awk -v s="$1" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}
umount_below "$STATE/"
umount_below /run/containerd/io.containerd
umount_below /var/lib/kubelet/pods/
# network: the pods' namespaces (those containerd made while the cluster ran), then the node's (its veth goes too)
for n in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do
  grep -qx "$n" "$RUN/cni-netns.before" 2>/dev/null || ip netns del "$n" 2>/dev/null || true
done
if [ -e "/var/run/netns/$NETNS" ]; then ip netns del "$NETNS"; log "removed netns $NETNS"; fi
ip link del "$HOST_IF" 2>/dev/null || true # normally gone with the namespace; the routes through it go too

# cgroups that kubelet and runc made
for h in /sys/fs/cgroup/ /sys/fs/cgroup/*/; do
  [ -d "$h$NODE" ] && find "$h$NODE" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done

# host sysctls kubelet changed
if [ -f "$RUN/sysctl.orig" ]; then
  sed 's/ //g' "$RUN/sysctl.orig" | xargs -r sysctl -qw
  log "restored host sysctls: $(tr '\n' ' ' <"$RUN/sysctl.orig")"
fi
# fixed host paths: remove the ones the cluster created; in pre-existing ones, only the cluster's entries
if [ -f "$RUN/host-paths.created" ]; then
  while read -r p; do
    case $p in
      /run/netns) # `ip netns add` made it a mount point; leave it if other namespaces live there
        [ -n "$(ls -A /run/netns 2>/dev/null)" ] || { umount /run/netns 2>/dev/null || true; rmdir /run/netns 2>/dev/null || true; } ;;
      ?*) rm -rf "$p" ;;
    esac
  done <"$RUN/host-paths.created"
fi
for l in /var/log/containers/*.log; do
  [ -L "$l" ] && case "$(readlink "$l")" in "$DATA"/*) rm -f "$l" ;; esac
done
rm -f /var/lib/cni/results/trellis-* /var/lib/cni/results/cni-loopback-* 2>/dev/null || true

rm -rf "$DATA" "$RUN" "$LOGS" "$KUBECONFIG_PATH"
log "cluster down"
