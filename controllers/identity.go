package controllers

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/render"
)

// identityRetry is how soon a mesh whose identity is not ready is looked at again, on top of the watches.
const identityRetry = 15 * time.Second

// reconcileIdentity renders the mesh's certificate chain and trust bundles and sets IdentityReady, the anchor and
// issuer expiries. A missing cert-manager, control-plane namespace or issuer is a condition, not an error: the
// reconcile goes on and retries later.
func (r *MeshReconciler) reconcileIdentity(ctx context.Context, s *meshScope) error {
	m := s.mesh
	if !r.CertManagerInstalled {
		s.identityNotReady(meshv1alpha1.ReasonCertManagerMissing,
			"cert-manager is not installed: the API server does not serve cert-manager.io/v1 Certificates. Install "+
				"cert-manager (v1.11 or newer) and restart the Trellis manager.")
		return nil
	}
	ns := &corev1.Namespace{}
	if err := r.Client.Get(ctx, client.ObjectKey{Name: m.Spec.ControlPlaneNamespace}, ns); err != nil {
		if !apierrors.IsNotFound(err) {
			return err
		}
		s.identityNotReady(meshv1alpha1.ReasonControlPlaneNamespaceMissing, fmt.Sprintf(
			"The control-plane namespace %q does not exist: create it (kubectl create namespace %s) or set "+
				"spec.controlPlaneNamespace to the namespace Trellis runs in.", m.Spec.ControlPlaneNamespace, m.Spec.ControlPlaneNamespace))
		return nil
	}
	s.prunable = append(s.prunable, pruneScope{certificateGVK, render.ComponentIdentity}, pruneScope{issuerGVK, render.ComponentIdentity})
	if err := r.renderIdentityStages(ctx, s); err != nil {
		return err
	}

	issuerSecret, err := r.readSecret(ctx, m.Spec.ControlPlaneNamespace, render.IdentityIssuerName(m))
	if err != nil {
		return err
	}
	var current []*x509.Certificate
	if m.Spec.Identity.IssuerRef == nil {
		anchorSecret, err := r.readSecret(ctx, m.Spec.ControlPlaneNamespace, render.TrustAnchorName(m))
		if err != nil {
			return err
		}
		anchors := parseCerts(anchorSecret, corev1.TLSCertKey)
		current = append(current, anchors...)
		m.Status.TrustAnchorExpiry = earliestExpiry(anchors)
	} else {
		m.Status.TrustAnchorExpiry = earliestExpiry(parseCerts(issuerSecret, cmmeta.TLSCAKey))
	}
	current = append(current, parseCerts(issuerSecret, cmmeta.TLSCAKey)...)
	if issuer := parseCerts(issuerSecret, corev1.TLSCertKey); len(issuer) > 0 {
		m.Status.IssuerExpiry = &metav1.Time{Time: issuer[0].NotAfter}
	} else {
		m.Status.IssuerExpiry = nil
	}

	record := &corev1.ConfigMap{}
	err = r.Client.Get(ctx, client.ObjectKey{Namespace: m.Spec.ControlPlaneNamespace, Name: render.TrustAnchorRecordName(m)}, record)
	if client.IgnoreNotFound(err) != nil {
		return err
	}
	previous := decodePEMCerts([]byte(record.Data[render.TrustBundleKey]))
	anchors := render.TrustAnchors(current, previous, r.now())
	if len(anchors) > 0 {
		// Bundles are pruned (from namespaces that left the mesh) only when they were rendered: a reconcile that
		// cannot read the anchors leaves the bundles in place.
		s.prunable = append(s.prunable, pruneScope{configMapGVK, render.ComponentTrustBundle})
		s.desired = append(s.desired, render.TrustBundles(m, s.namespaces, render.EncodePEM(anchors))...)
	}

	reason, message, ok := r.identityChain(ctx, m, len(anchors) > 0)
	if !ok {
		s.requeueAfter(identityRetry)
	} else if r.IdentityMesh != "" && m.Name != r.IdentityMesh {
		// Waiting helps nothing here: only a restart of the manager with another flag changes it.
		ok, reason = false, meshv1alpha1.ReasonIdentityServiceElsewhere
		message = fmt.Sprintf("The certificate chain is ready, but the manager's identity service issues the workload "+
			"certificates of Mesh %q only (its --identity-mesh flag), so the proxies of this Mesh cannot obtain any and "+
			"never become ready. Keep one Mesh per cluster, or restart the manager with --identity-mesh=%s if this Mesh "+
			"is the one to serve.", r.IdentityMesh, m.Name)
	}
	setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionIdentityReady, ok, reason, message)
	return nil
}

// renderIdentityStages renders the chain one issued stage at a time: a stage whose predecessor's Secret does not
// exist yet waits, unless its Certificate already exists (a chain being re-issued keeps every stage).
func (r *MeshReconciler) renderIdentityStages(ctx context.Context, s *meshScope) error {
	ns := s.mesh.Spec.ControlPlaneNamespace
	for _, st := range render.IdentityStages(s.mesh) {
		if st.NeedsSecret != "" {
			secret, err := r.readSecret(ctx, ns, st.NeedsSecret)
			if err != nil {
				return err
			}
			err = r.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: st.Certificate}, &cmapi.Certificate{})
			if len(secret.Data[corev1.TLSCertKey]) == 0 && apierrors.IsNotFound(err) {
				return nil
			}
		}
		s.desired = append(s.desired, st.Objects...)
	}
	return nil
}

// identityChain checks, in order, the user's issuer (if any) and the Certificates Trellis requested, and returns
// the first problem with a message that says what to do.
func (r *MeshReconciler) identityChain(ctx context.Context, m *meshv1alpha1.Mesh, haveAnchors bool) (reason, message string, ok bool) {
	if ref := m.Spec.Identity.IssuerRef; ref != nil && ref.Group == "cert-manager.io" {
		if reason, message, ok := r.userIssuerReady(ctx, m, ref); !ok {
			return reason, message, false
		}
	}
	names := []string{render.IdentityIssuerName(m), render.IdentityServingName(m)}
	if m.Spec.Identity.IssuerRef == nil {
		names = append([]string{render.TrustAnchorName(m)}, names...)
	}
	for _, name := range names {
		cert := &cmapi.Certificate{}
		if err := r.Client.Get(ctx, client.ObjectKey{Namespace: m.Spec.ControlPlaneNamespace, Name: name}, cert); err != nil {
			return meshv1alpha1.ReasonIssuerNotReady, fmt.Sprintf("Waiting for Certificate %s/%s to be created: %v",
				m.Spec.ControlPlaneNamespace, name, err), false
		}
		cond := certificateCondition(cert, cmapi.CertificateConditionReady)
		if cond == nil || cond.Status != cmmeta.ConditionTrue {
			msg := "cert-manager has not reported on it yet"
			if cond != nil {
				msg = fmt.Sprintf("%s: %s", cond.Reason, cond.Message)
			}
			return meshv1alpha1.ReasonIssuerNotReady, fmt.Sprintf("Certificate %s/%s is not Ready (%s); see kubectl describe certificate -n %s %s",
				m.Spec.ControlPlaneNamespace, name, msg, m.Spec.ControlPlaneNamespace, name), false
		}
	}
	if !haveAnchors {
		return meshv1alpha1.ReasonIssuerNotReady, fmt.Sprintf("The identity issuer Secret %s/%s holds no CA certificate (ca.crt): "+
			"the issuer must publish the CA that workloads should trust", m.Spec.ControlPlaneNamespace, render.IdentityIssuerName(m)), false
	}
	return meshv1alpha1.ReasonReady, "The trust anchor and identity issuer are issued", true
}

// userIssuerReady checks that the Issuer or ClusterIssuer named in spec.identity.issuerRef exists and is Ready.
func (r *MeshReconciler) userIssuerReady(ctx context.Context, m *meshv1alpha1.Mesh, ref *meshv1alpha1.IssuerReference) (string, string, bool) {
	var conds []cmapi.IssuerCondition
	where := fmt.Sprintf("ClusterIssuer %q", ref.Name)
	if ref.Kind == cmapi.ClusterIssuerKind {
		iss := &cmapi.ClusterIssuer{}
		err := r.Client.Get(ctx, client.ObjectKey{Name: ref.Name}, iss)
		if err != nil {
			return issuerMissing(where, err)
		}
		conds = iss.Status.Conditions
	} else {
		where = fmt.Sprintf("Issuer %q in namespace %s", ref.Name, m.Spec.ControlPlaneNamespace)
		iss := &cmapi.Issuer{}
		err := r.Client.Get(ctx, client.ObjectKey{Namespace: m.Spec.ControlPlaneNamespace, Name: ref.Name}, iss)
		if err != nil {
			return issuerMissing(where, err)
		}
		conds = iss.Status.Conditions
	}
	for _, c := range conds {
		if c.Type == cmapi.IssuerConditionReady {
			if c.Status == cmmeta.ConditionTrue {
				return "", "", true
			}
			return meshv1alpha1.ReasonIssuerNotReady, fmt.Sprintf("spec.identity.issuerRef: %s is not Ready: %s", where, c.Message), false
		}
	}
	return meshv1alpha1.ReasonIssuerNotReady, fmt.Sprintf("spec.identity.issuerRef: %s has not been checked by cert-manager yet", where), false
}

func issuerMissing(where string, err error) (string, string, bool) {
	if apierrors.IsNotFound(err) {
		return meshv1alpha1.ReasonIssuerNotReady, fmt.Sprintf("spec.identity.issuerRef names %s, which does not exist: create it or fix the reference", where), false
	}
	return meshv1alpha1.ReasonIssuerNotReady, fmt.Sprintf("reading %s: %v", where, err), false
}

func certificateCondition(c *cmapi.Certificate, typ cmapi.CertificateConditionType) *cmapi.CertificateCondition {
	for i := range c.Status.Conditions {
		if c.Status.Conditions[i].Type == typ {
			return &c.Status.Conditions[i]
		}
	}
	return nil
}

// readSecret reads a Secret straight from the API server (the manager does not cache Secrets cluster-wide). A
// missing Secret is returned empty.
func (r *MeshReconciler) readSecret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, s); err != nil {
		if apierrors.IsNotFound(err) {
			return &corev1.Secret{}, nil
		}
		return nil, fmt.Errorf("reading Secret %s/%s: %w", namespace, name, err)
	}
	return s, nil
}

func parseCerts(s *corev1.Secret, key string) []*x509.Certificate {
	return decodePEMCerts(s.Data[key])
}

// decodePEMCerts returns the certificates of a PEM bundle, skipping anything that does not parse.
func decodePEMCerts(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return out
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			out = append(out, c)
		}
	}
}

func earliestExpiry(certs []*x509.Certificate) *metav1.Time {
	var t *metav1.Time
	for _, c := range certs {
		if t == nil || c.NotAfter.Before(t.Time) {
			t = &metav1.Time{Time: c.NotAfter}
		}
	}
	return t
}
