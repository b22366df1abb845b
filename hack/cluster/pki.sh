#!/usr/bin/env bash
# Creates the test ground's PKI (ECDSA P-256, openssl) and the components' kubeconfigs. Keeps an existing PKI.
. "$(dirname "$0")/lib.sh"
mkdir -p "$PKI" "$CFG"
cd "$PKI" || exit 1

if [ ! -f ca.crt ]; then
  log "pki: creating CA and certificates in $PKI"
  key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null; }
  key ca
  openssl req -x509 -new -key ca.key -subj "/CN=trellis-test-ground-ca" -days 3650 -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
  # leaf <name> <subject> [subjectAltName]
  leaf() {
    key "$1"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=serverAuth,clientAuth"
      [ -z "${3:-}" ] || echo "subjectAltName=$3"
    } >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile "$1.ext" \
      -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  }
  leaf apiserver "/CN=kube-apiserver" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$API_SVC_IP,IP:$NODE_IP"
  leaf apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  leaf admin "/O=system:masters/CN=trellis-admin"
  leaf controller-manager "/CN=system:kube-controller-manager"
  leaf scheduler "/CN=system:kube-scheduler"
  leaf kube-proxy "/CN=system:kube-proxy"
  leaf kubelet-client "/O=system:nodes/CN=system:node:$NODE"
  leaf kubelet-serving "/CN=$NODE" "DNS:$NODE,IP:$NODE_IP"
  leaf prometheus "/CN=trellis:prometheus"
  key sa
  openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  chmod 600 ./*.key
fi

# kubeconfig <file> <client cert name> <server>
kubeconfig() {
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: trellis
  cluster:
    server: $3
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$2.crt")
    client-key-data: $(base64 -w0 "$2.key")
contexts:
- name: trellis
  context: {cluster: trellis, user: $2}
current-context: trellis
KC
  chmod 600 "$1"
}
kubeconfig "$CFG/controller-manager.kubeconfig" controller-manager https://127.0.0.1:6443
kubeconfig "$CFG/scheduler.kubeconfig" scheduler https://127.0.0.1:6443
kubeconfig "$CFG/kube-proxy.kubeconfig" kube-proxy "https://$NODE_IP:6443"
kubeconfig "$CFG/kubelet.kubeconfig" kubelet-client "https://$NODE_IP:6443"
kubeconfig "$KUBECONFIG_PATH" admin "https://$NODE_IP:6443"
