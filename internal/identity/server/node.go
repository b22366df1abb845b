package server

import (
	"context"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// Keys of the TokenReview's user.extra that the API server sets for a token bound to a pod.
const (
	// ExtraNodeName is the node of the pod the token is bound to (Kubernetes 1.30 and later).
	ExtraNodeName = "authentication.kubernetes.io/node-name"
	// ExtraPodName is the name of the pod the token is bound to.
	ExtraPodName = "authentication.kubernetes.io/pod-name"
)

// isNodeProxy reports whether sa is the node proxy's ServiceAccount.
func (s *Server) isNodeProxy(sa spiffe.ID) bool {
	np := s.opts.NodeProxy
	if np.Name == "" {
		return false
	}
	ns, name, ok := sa.ServiceAccount()
	return ok && ns == np.Namespace && name == np.Name
}

// authorizeNode decides whether the node proxy whose token authenticated as user may hold requested: it must be a
// ServiceAccount identity of the service's trust domain with a pod on the token's node that the node proxy serves
// (labelled mesh.trellis.io/proxy=node) and that has not finished. It returns the node.
func (s *Server) authorizeNode(ctx context.Context, user authenticationv1.UserInfo, requested spiffe.ID) (string, error) {
	ns, sa, ok := requested.ServiceAccount()
	if !ok || requested.TrustDomain() != s.opts.TrustDomain {
		return "", identity.Errorf(identity.ReasonNodeNotAuthorized,
			"the node proxy asks for %s, which is not a ServiceAccount identity of trust domain %s", requested, s.opts.TrustDomain)
	}
	node, err := s.nodeOf(ctx, user)
	if err != nil {
		return "", err
	}
	pods, err := s.opts.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
		FieldSelector: "spec.nodeName=" + node,
		LabelSelector: wellknown.LabelProxy + "=" + wellknown.ProxyNode,
	})
	if err != nil {
		return "", identity.Errorf(identity.ReasonNodeLookupFailed, "listing the pods of namespace %s on node %s: %v", ns, node, err)
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		podSA := p.Spec.ServiceAccountName
		if podSA == "" {
			podSA = "default"
		}
		// The field selector is checked again: a client that ignores it must not widen the grant.
		if p.Spec.NodeName == node && podSA == sa && p.Labels[wellknown.LabelProxy] == wellknown.ProxyNode &&
			p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return node, nil
		}
	}
	return "", identity.Errorf(identity.ReasonNodeNotAuthorized,
		"the node proxy on node %s asks for %s, but no pod of ServiceAccount %s/%s served by the node proxy "+
			"(labelled %s=%s) runs on that node", node, requested, ns, sa, wellknown.LabelProxy, wellknown.ProxyNode)
}

// nodeOf returns the node of the pod the token is bound to: from the TokenReview's node-name extra, or else by
// reading the pod its pod-name extra names (in the ServiceAccount's namespace).
func (s *Server) nodeOf(ctx context.Context, user authenticationv1.UserInfo) (string, error) {
	if v := user.Extra[ExtraNodeName]; len(v) == 1 && v[0] != "" {
		return v[0], nil
	}
	pod := user.Extra[ExtraPodName]
	ns, _, _ := serviceAccountFromUsername(user.Username)
	if len(pod) != 1 || pod[0] == "" {
		return "", identity.Errorf(identity.ReasonNodeNotAuthorized,
			"the node proxy's token is not bound to a pod, so it names no node: mount a projected ServiceAccount token")
	}
	p, err := s.opts.Client.CoreV1().Pods(ns).Get(ctx, pod[0], metav1.GetOptions{})
	if err != nil {
		return "", identity.Errorf(identity.ReasonNodeLookupFailed, "reading the node proxy's pod %s/%s: %v", ns, pod[0], err)
	}
	if p.Spec.NodeName == "" {
		return "", identity.Errorf(identity.ReasonNodeNotAuthorized, "the node proxy's pod %s/%s is not scheduled", ns, pod[0])
	}
	return p.Spec.NodeName, nil
}
