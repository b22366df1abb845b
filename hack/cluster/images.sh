#!/usr/bin/env bash
# Builds container images without a registry and loads them into the test ground's containerd.
#
#   images.sh infra     pause, CoreDNS and cert-manager images -> $TRELLIS_CACHE/images (kept; built when missing)
#   images.sh project   every cmd/<name> main and test/apps/<name> -> trellis.io/<name>:dev in .tmp/images
#                       (<name>.tar and <name>.digest), then loads them into the cluster if it runs
#   images.sh load      imports every image tarball (infra and project) into the running cluster
. "$(dirname "$0")/lib.sh"

GOBUILD=(env CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -ldflags "-s -w")

imgbuild() {
  [ -x "$ROOT/bin/imgbuild" ] && [ -z "$(find "$ROOT/hack/tools/imgbuild" -newer "$ROOT/bin/imgbuild" -name '*.go')" ] ||
    (cd "$ROOT/hack/tools/imgbuild" && go build -o "$ROOT/bin/imgbuild" .)
  "$ROOT/bin/imgbuild" "$@" # prints: <reference> <digest> <tarball>
}

infra() {
  mkdir -p "$IMAGES/bin"
  if [ ! -f "$IMAGES/pause.tar" ]; then
    "${GOBUILD[@]}" -o "$IMAGES/bin/pause" "$ROOT/hack/cluster/pause"
    imgbuild >/dev/null -t "$PAUSE_IMAGE" -o "$IMAGES/pause.tar" -entrypoint /pause -user 65535:65535 /pause="$IMAGES/bin/pause"
    log "images: built $PAUSE_IMAGE"
  fi
  local f=$IMAGES/coredns-$COREDNS_VERSION.tar
  if [ ! -f "$f" ]; then
    imgbuild >/dev/null -t "$COREDNS_IMAGE" -o "$f" -entrypoint /coredns /coredns="$KBIN/coredns"
    log "images: built $COREDNS_IMAGE"
  fi
  local c
  for c in controller webhook cainjector; do
    f=$IMAGES/cert-manager-$c-$CERT_MANAGER_VERSION.tar
    [ -f "$f" ] && continue
    imgbuild >/dev/null -t "$IMAGE_REPO/cert-manager-$c:$CERT_MANAGER_VERSION" -o "$f" -entrypoint "/$c" -user 65532:65532 \
      "/$c=$CMBIN/$c"
    log "images: built $IMAGE_REPO/cert-manager-$c:$CERT_MANAGER_VERSION"
  done
}

# Files for an image whose programs run iptables (nft and legacy back ends) in the pod's network namespace.
iptables_files() {
  local f l
  for f in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    echo "/usr/sbin/$f=/usr/sbin/xtables-nft-multi"
  done
  for f in iptables-legacy iptables-legacy-save iptables-legacy-restore ip6tables-legacy ip6tables-legacy-save \
    ip6tables-legacy-restore; do
    echo "/usr/sbin/$f=/usr/sbin/xtables-legacy-multi"
  done
  echo "/usr/sbin/xtables-nft-multi=/usr/sbin/xtables-nft-multi"
  echo "/usr/sbin/xtables-legacy-multi=/usr/sbin/xtables-legacy-multi"
  for l in $(ldd /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi |
    awk '/=>/ {print $3} /ld-linux/ {print $1}' | sort -u); do echo "$l=$l"; done
  for f in /usr/lib/x86_64-linux-gnu/xtables/*.so; do echo "$f=$f"; done
}

project() {
  local dirs=() d n
  for d in "$ROOT"/cmd/*/ "$ROOT"/test/apps/*/; do
    compgen -G "$d*.go" >/dev/null && grep -qs '^package main' "$d"*.go && dirs+=("${d%/}")
  done
  [ ${#dirs[@]} -gt 0 ] || die "no mains found under cmd/ or test/apps/"
  mkdir -p "$PROJECT_IMAGES/bin"
  log "images: compiling ${#dirs[@]} static binaries: $(for d in "${dirs[@]}"; do printf '%s ' "${d#"$ROOT"/}"; done)"
  (cd "$ROOT" && "${GOBUILD[@]}" -o "$PROJECT_IMAGES/bin/" "${dirs[@]/#$ROOT/.}")
  for d in "${dirs[@]}"; do
    n=$(basename "$d")
    local args=(-t "$IMAGE_REPO/$n:dev" -o "$PROJECT_IMAGES/$n.tar" -entrypoint "/$n") files=("/$n=$PROJECT_IMAGES/bin/$n")
    case $n in
      proxy-init) mapfile -t -O 1 files < <(iptables_files) ;; # runs as root with NET_ADMIN
      *) args+=(-user 65532:65532) ;;
    esac
    # the digest lets the e2e suites roll Deployments whose image changed under the same tag
    imgbuild "${args[@]}" "${files[@]}" | awk '{print $2}' >"$PROJECT_IMAGES/$n.digest"
    log "images: built $IMAGE_REPO/$n:dev"
  done
}

load() { # [tarball...]: default every infra and project image
  running containerd || { log "images: cluster not running; images load on the next cluster-up"; return 0; }
  local f n=0
  [ $# -gt 0 ] || set -- "$IMAGES"/*.tar "$PROJECT_IMAGES"/*.tar
  local pids=() p
  for f in "$@"; do # in parallel: unpacking the layers is most of the time
    [ -f "$f" ] || continue
    ctr_ images import "$f" >/dev/null &
    pids+=($!)
    n=$((n + 1))
  done
  for p in "${pids[@]}"; do wait "$p" || die "images: import failed"; done
  log "images: loaded $n image tarballs into the cluster's containerd"
}

case ${1:-} in
  infra) infra ;;
  project) project; load "$PROJECT_IMAGES"/*.tar ;;
  load) load ;;
  *) echo "usage: $0 infra|project|load" >&2; exit 2 ;;
esac
