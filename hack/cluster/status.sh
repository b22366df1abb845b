#!/usr/bin/env bash
# Shows the test ground's state. Exits 0 when every daemon runs and the API server is ready, 1 otherwise.
. "$(dirname "$0")/lib.sh"
ok=0
printf '%-24s %s\n' "netns $NETNS" "$([ -e "/var/run/netns/$NETNS" ] && echo present || echo absent)"
for d in "${DAEMONS[@]}"; do
  if p=$(pid_of "$d"); then printf '%-24s running (pid %s)\n' "$d" "$p"; else printf '%-24s stopped\n' "$d"; ok=1; fi
done
if [ $ok = 0 ] && kc get --raw /readyz >/dev/null 2>&1; then
  echo "kubeconfig               $KUBECONFIG_PATH"
  echo "api server               https://$NODE_IP:6443"
  echo "prometheus               http://$PROM_ADDR"
  kc get nodes -o wide
  kc get pods -A -o wide
else
  echo "cluster is not (fully) up: make cluster-up"
  ok=1
fi
exit $ok
