package controllers

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/render"
)

// bundleOf returns the certificates of the trust bundle in namespace ns, or an error while it is missing.
func bundleOf(t *testing.T, c client.Client, ns string) ([]*x509.Certificate, error) {
	t.Helper()
	cm := &corev1.ConfigMap{}
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: ns, Name: render.TrustBundleName}, cm); err != nil {
		return nil, err
	}
	certs := decodePEMCerts([]byte(cm.Data[render.TrustBundleKey]))
	if len(certs) == 0 {
		return nil, fmt.Errorf("empty bundle")
	}
	return certs, nil
}

func secretCert(t *testing.T, c client.Client, name string) (*x509.Certificate, error) {
	t.Helper()
	s := &corev1.Secret{}
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: controlPlane, Name: name}, s); err != nil {
		return nil, err
	}
	certs := parseCerts(s, corev1.TLSCertKey)
	if len(certs) == 0 {
		return nil, fmt.Errorf("secret %s has no certificate", name)
	}
	return certs[0], nil
}

// verifiesUnder checks that leaf chains to one of roots.
func verifiesUnder(leaf *x509.Certificate, roots []*x509.Certificate) error {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func TestIdentityChainIssuedByRealCertManager(t *testing.T) {
	c := startManager(t)
	namespace(t, c, "id-app", map[string]string{"id-chain": "yes"})
	mesh := createMesh(t, c, "idchain", map[string]string{"id-chain": "yes"})

	m := meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionIdentityReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)

	// The chain has the shape the design asks for.
	issuerCert := &cmapi.Certificate{}
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: controlPlane, Name: "idchain-identity-issuer"}, issuerCert); err != nil {
		t.Fatal(err)
	}
	spec := issuerCert.Spec
	if !spec.IsCA || spec.Duration.Duration != 48*time.Hour || spec.RenewBefore.Duration != 25*time.Hour ||
		spec.PrivateKey.Algorithm != cmapi.ECDSAKeyAlgorithm || spec.PrivateKey.Size != 256 ||
		spec.PrivateKey.RotationPolicy != cmapi.RotationPolicyAlways || spec.IssuerRef.Name != "idchain-trust-anchor" {
		t.Fatalf("identity issuer Certificate spec: %+v", spec)
	}
	for _, name := range []string{"idchain-selfsigned", "idchain-trust-anchor"} {
		iss := &cmapi.Issuer{}
		if err := c.Get(testCtx(t), client.ObjectKey{Namespace: controlPlane, Name: name}, iss); err != nil {
			t.Fatalf("Issuer %s: %v", name, err)
		}
		if len(iss.OwnerReferences) != 1 || iss.OwnerReferences[0].Name != mesh.Name {
			t.Errorf("Issuer %s is not owned by the Mesh: %+v", name, iss.OwnerReferences)
		}
	}

	// The bundle in the meshed namespace verifies the issuer that cert-manager issued.
	bundle, err := bundleOf(t, c, "id-app")
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := secretCert(t, c, "idchain-identity-issuer")
	if err != nil {
		t.Fatal(err)
	}
	if !issuer.IsCA || issuer.NotAfter.Sub(issuer.NotBefore) != 48*time.Hour {
		t.Errorf("issued identity issuer: isCA %v, lifetime %v", issuer.IsCA, issuer.NotAfter.Sub(issuer.NotBefore))
	}
	if err := verifiesUnder(issuer, bundle); err != nil {
		t.Fatalf("the identity issuer does not verify under the trust bundle: %v", err)
	}
	if m.Status.IssuerExpiry == nil || !m.Status.IssuerExpiry.Time.Equal(issuer.NotAfter) || m.Status.TrustAnchorExpiry == nil {
		t.Errorf("status expiries: issuer %v (want %v), anchor %v", m.Status.IssuerExpiry, issuer.NotAfter, m.Status.TrustAnchorExpiry)
	}

	// Deleting cert-manager's issuer Secret heals: a new issuer, still trusted, and the Mesh Ready again.
	if err := c.Delete(testCtx(t), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: controlPlane, Name: "idchain-identity-issuer"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a new identity issuer", func() error {
		healed, err := secretCert(t, c, "idchain-identity-issuer")
		if err != nil {
			return err
		}
		if healed.SerialNumber.Cmp(issuer.SerialNumber) == 0 {
			return fmt.Errorf("still the old issuer")
		}
		if err := verifiesUnder(healed, bundle); err != nil {
			return err
		}
		return nil
	})
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionIdentityReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
}

func TestTrustBundleFollowsNamespacesAndKeepsPreviousAnchor(t *testing.T) {
	c := startManager(t)
	namespace(t, c, "rot-a", map[string]string{"rot": "yes"})
	namespace(t, c, "rot-b", map[string]string{"rot": "yes"})
	mesh := createMesh(t, c, "rot", map[string]string{"rot": "yes"})
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionIdentityReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	eventually(t, "bundles in both namespaces", func() error {
		for _, ns := range []string{"rot-a", "rot-b"} {
			if _, err := bundleOf(t, c, ns); err != nil {
				return fmt.Errorf("%s: %w", ns, err)
			}
		}
		return nil
	})

	// A namespace that leaves the mesh loses its bundle; the other keeps it.
	b := &corev1.Namespace{}
	if err := c.Get(testCtx(t), client.ObjectKey{Name: "rot-b"}, b); err != nil {
		t.Fatal(err)
	}
	delete(b.Labels, "rot")
	if err := c.Update(testCtx(t), b); err != nil {
		t.Fatal(err)
	}
	eventually(t, "bundle pruned from rot-b", func() error {
		if _, err := bundleOf(t, c, "rot-b"); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
	if _, err := bundleOf(t, c, "rot-a"); err != nil {
		t.Fatalf("rot-a lost its bundle: %v", err)
	}

	// Rotating the trust anchor (cert-manager re-issues it with a new key) keeps the old anchor in the bundle, so
	// running proxies holding certificates under the old anchor keep working.
	oldAnchor, err := secretCert(t, c, "rot-trust-anchor")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(testCtx(t), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: controlPlane, Name: "rot-trust-anchor"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "bundle with the new and the old anchor", func() error {
		newAnchor, err := secretCert(t, c, "rot-trust-anchor")
		if err != nil {
			return err
		}
		if newAnchor.Equal(oldAnchor) {
			return fmt.Errorf("anchor not re-issued yet")
		}
		bundle, err := bundleOf(t, c, "rot-a")
		if err != nil {
			return err
		}
		var haveOld, haveNew bool
		for _, cert := range bundle {
			haveOld = haveOld || cert.Equal(oldAnchor)
			haveNew = haveNew || cert.Equal(newAnchor)
		}
		if !haveOld || !haveNew {
			return fmt.Errorf("bundle has old %v, new %v (%d certificates)", haveOld, haveNew, len(bundle))
		}
		return nil
	})
}

func TestCertManagerMissingIsACondition(t *testing.T) {
	c := startManagerWith(t, func(r *MeshReconciler) { r.CertManagerInstalled = false })
	mesh := createMesh(t, c, "nocm", map[string]string{"nocm": "yes"})
	m := meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionIdentityReady, metav1.ConditionFalse, meshv1alpha1.ReasonCertManagerMissing)
	msg := meta.FindStatusCondition(m.Status.Conditions, meshv1alpha1.ConditionIdentityReady).Message
	if !strings.Contains(msg, "Install cert-manager") {
		t.Errorf("message is not actionable: %q", msg)
	}
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionReady, metav1.ConditionFalse, meshv1alpha1.ReasonCertManagerMissing)
}

func TestCertManagerServedDetection(t *testing.T) {
	env.Require(t)
	mapper, err := newMapper()
	if err != nil {
		t.Fatal(err)
	}
	if !CertManagerServed(mapper) {
		t.Fatal("the test API server serves cert-manager's CRDs, but CertManagerServed says no")
	}
}

func TestMissingControlPlaneNamespaceIsACondition(t *testing.T) {
	c := startManager(t)
	m := &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "nocp"}}
	m.Spec.ControlPlaneNamespace = "nowhere"
	m.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"nocp": "yes"}}
	if err := c.Create(testCtx(t), m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(testCtx(t), m) })
	got := meshCondition(t, c, m.Name, meshv1alpha1.ConditionIdentityReady, metav1.ConditionFalse, meshv1alpha1.ReasonControlPlaneNamespaceMissing)
	if msg := meta.FindStatusCondition(got.Status.Conditions, meshv1alpha1.ConditionIdentityReady).Message; !strings.Contains(msg, "kubectl create namespace nowhere") {
		t.Errorf("message is not actionable: %q", msg)
	}
}

func TestUserIssuer(t *testing.T) {
	c := startManager(t)
	namespace(t, c, "byo-app", map[string]string{"byo": "yes"})
	m := &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "byo"}}
	m.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"byo": "yes"}}
	m.Spec.Identity.IssuerRef = &meshv1alpha1.IssuerReference{Name: "corp-ca", Kind: "ClusterIssuer", Group: "cert-manager.io"}
	if err := c.Create(testCtx(t), m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(testCtx(t), m) })

	// The issuer does not exist yet: the condition says so.
	got := meshCondition(t, c, m.Name, meshv1alpha1.ConditionIdentityReady, metav1.ConditionFalse, meshv1alpha1.ReasonIssuerNotReady)
	if msg := meta.FindStatusCondition(got.Status.Conditions, meshv1alpha1.ConditionIdentityReady).Message; !strings.Contains(msg, `ClusterIssuer "corp-ca"`) || !strings.Contains(msg, "does not exist") {
		t.Errorf("message: %q", msg)
	}

	// A corporate CA: a self-signed root in cert-manager's cluster resource namespace, and a CA ClusterIssuer on it.
	objs := []client.Object{
		&cmapi.ClusterIssuer{ObjectMeta: metav1.ObjectMeta{Name: "corp-root"}, Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}}},
		&cmapi.Certificate{ObjectMeta: metav1.ObjectMeta{Namespace: controlPlane, Name: "corp-root"}, Spec: cmapi.CertificateSpec{
			CommonName: "Corp Root CA", IsCA: true, SecretName: "corp-root",
			IssuerRef: cmmeta.IssuerReference{Name: "corp-root", Kind: cmapi.ClusterIssuerKind},
		}},
		&cmapi.ClusterIssuer{ObjectMeta: metav1.ObjectMeta{Name: "corp-ca"}, Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: "corp-root"}}}},
	}
	for _, o := range objs {
		if err := c.Create(testCtx(t), o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Delete(testCtx(t), o) })
	}
	meshCondition(t, c, m.Name, meshv1alpha1.ConditionIdentityReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)

	// No self-signed anchor of Trellis's own; the bundle is the corporate root, which verifies the issuer.
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: controlPlane, Name: "byo-trust-anchor"}, &cmapi.Certificate{}); err == nil {
		t.Error("a trust anchor was created although issuerRef is set")
	}
	root, err := secretCert(t, c, "corp-root")
	if err != nil {
		t.Fatal(err)
	}
	var bundle []*x509.Certificate
	eventually(t, "bundle in byo-app", func() error {
		bundle, err = bundleOf(t, c, "byo-app")
		return err
	})
	if len(bundle) != 1 || !bundle[0].Equal(root) {
		t.Fatalf("bundle should be exactly the corporate root, has %d certificates", len(bundle))
	}
	issuer, err := secretCert(t, c, "byo-identity-issuer")
	if err != nil {
		t.Fatal(err)
	}
	if err := verifiesUnder(issuer, bundle); err != nil {
		t.Fatal(err)
	}
}

func newMapper() (meta.RESTMapper, error) {
	httpClient, err := rest.HTTPClientFor(env.Config)
	if err != nil {
		return nil, err
	}
	return apiutil.NewDynamicRESTMapper(env.Config, httpClient)
}

// TestMeshWithoutIdentityService checks that a Mesh the manager's identity service does not serve says so instead of
// reporting Ready: its certificate chain is issued, but its proxies could never obtain a certificate.
func TestMeshWithoutIdentityService(t *testing.T) {
	c := startManagerWith(t, func(r *MeshReconciler) { r.IdentityMesh = "served" })
	namespace(t, c, "elsewhere-app", map[string]string{"elsewhere": "yes"})
	mesh := createMesh(t, c, "elsewhere", map[string]string{"elsewhere": "yes"})
	m := meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionIdentityReady, metav1.ConditionFalse, meshv1alpha1.ReasonIdentityServiceElsewhere)
	msg := meta.FindStatusCondition(m.Status.Conditions, meshv1alpha1.ConditionIdentityReady).Message
	if !strings.Contains(msg, `Mesh "served" only`) || !strings.Contains(msg, "--identity-mesh=elsewhere") {
		t.Errorf("message not actionable: %q", msg)
	}
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionReady, metav1.ConditionFalse, meshv1alpha1.ReasonIdentityServiceElsewhere)
}
