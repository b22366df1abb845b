package server

import (
	"slices"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// createPod creates a pod of ServiceAccount sa scheduled on node (no scheduler runs: spec.nodeName is set at
// creation), labelled for the node proxy when served, with phase set in its status.
func createPod(t *testing.T, ns, name, sa, node string, served bool, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	if served {
		p.Labels[wellknown.LabelProxy] = wellknown.ProxyNode
	}
	created, err := kube.client.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Phase = phase
	created, err = kube.client.CoreV1().Pods(ns).UpdateStatus(t.Context(), created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// TestNodeProxyDelegation: the node proxy's projected token (bound to its pod on node-a) obtains the certificates
// of ServiceAccounts whose pods it serves on node-a, and nothing else; each refusal names the reason and is
// counted. It also checks on the real API server that TokenReview carries the node's name for a pod-bound token,
// and that without it the service finds the node through the pod.
func TestNodeProxyDelegation(t *testing.T) {
	needKube(t)
	cp, app := newNamespace(t), newNamespace(t)
	createServiceAccount(t, cp, "mesh-node-proxy")
	createServiceAccount(t, cp, "other")
	for _, sa := range []string{"web", "db", "api", "done"} {
		createServiceAccount(t, app, sa)
	}
	proxyPod := createPod(t, cp, "node-proxy-a", "mesh-node-proxy", "node-a", false, corev1.PodRunning)
	otherPod := createPod(t, cp, "other-a", "other", "node-a", false, corev1.PodRunning)
	createPod(t, app, "web-1", "web", "node-a", true, corev1.PodPending)  // initializing: its app waits for the proxy
	createPod(t, app, "db-1", "db", "node-b", true, corev1.PodRunning)    // another node
	createPod(t, app, "api-1", "api", "node-a", false, corev1.PodRunning) // not served by the node proxy
	createPod(t, app, "done-1", "done", "node-a", true, corev1.PodSucceeded)

	bound := func(p *corev1.Pod) *authenticationv1.BoundObjectReference {
		return &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}
	}
	token := requestToken(t, cp, "mesh-node-proxy", identity.Audience, bound(proxyPod))

	// What the API server says about a pod-bound token: the node is in user.extra.
	review, err := kube.client.AuthenticationV1().TokenReviews().Create(t.Context(), &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{identity.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := review.Status.User.Extra[ExtraNodeName]; !slices.Equal(got, authenticationv1.ExtraValue{"node-a"}) {
		t.Fatalf("TokenReview extra %s = %v, want [node-a] (extra: %v)", ExtraNodeName, got, review.Status.User.Extra)
	}

	root := identitytest.NewRoot(t, "trust anchor")
	srv := startServer(t, cp, root.NewIntermediate(t, "identity issuer"), root, func(o *Options) {
		o.NodeProxy = types.NamespacedName{Namespace: cp, Name: "mesh-node-proxy"}
	})
	// The same token with the node claim removed: TokenReview then names only the pod, which gives the node.
	noNode := resignToken(t, token, func(claims map[string]any) {
		delete(claims["kubernetes.io"].(map[string]any), "node")
	})
	cases := []struct {
		name, token, sa string
		want            identity.Reason
	}{
		{"a pod it serves on its node, still initializing", token, "web", identity.ReasonIssued},
		{"the node found through the pod when the token names none", noNode, "web", identity.ReasonIssued},
		{"a pod on another node", token, "db", identity.ReasonNodeNotAuthorized},
		{"a pod on its node it does not serve", token, "api", identity.ReasonNodeNotAuthorized},
		{"a finished pod", token, "done", identity.ReasonNodeNotAuthorized},
		{"a ServiceAccount without pods", token, "default", identity.ReasonNodeNotAuthorized},
		{"a token not bound to a pod", requestToken(t, cp, "mesh-node-proxy", identity.Audience, nil), "web", identity.ReasonNodeNotAuthorized},
		{"another ServiceAccount of the control plane on the same node", requestToken(t, cp, "other", identity.Audience, bound(otherPod)), "web", identity.ReasonIdentityMismatch},
		{"a workload asking for its neighbour", requestToken(t, app, "web", identity.Audience, nil), "db", identity.ReasonIdentityMismatch},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := certifyCount(t, srv.Server, tc.want)
			csr, key := newCSR(t, saID(t, app, tc.sa))
			chain, err := srv.Certify(t.Context(), tc.token, csr)
			if got := identity.ReasonOf(err); got != tc.want {
				t.Fatalf("reason %s (%v), want %s", got, err, tc.want)
			}
			if certifyCount(t, srv.Server, tc.want) != before+1 {
				t.Errorf("identity_certify_total{reason=%q} not counted", tc.want)
			}
			if tc.want != identity.ReasonIssued {
				return
			}
			leaf := parseChain(t, chain)[0]
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != saID(t, app, tc.sa).String() || !key.PublicKey.Equal(leaf.PublicKey) {
				t.Fatalf("leaf for %v, want %s with the CSR's key", leaf.URIs, saID(t, app, tc.sa))
			}
		})
	}

	// Deleting the node proxy's pod revokes its token.
	if err := kube.client.CoreV1().Pods(cp).Delete(t.Context(), proxyPod.Name, *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	csr, _ := newCSR(t, saID(t, app, "web"))
	eventually(t, "the deleted pod's token to be refused", func() bool {
		_, err := srv.Certify(t.Context(), token, csr)
		return identity.ReasonOf(err) == identity.ReasonTokenRevoked
	})
}
