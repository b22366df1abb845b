package render

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"sort"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// Component labels of identity objects.
const (
	// ComponentIdentity labels the cert-manager objects of a mesh's identity.
	ComponentIdentity = "identity"
	// ComponentTrustBundle labels trust-bundle ConfigMaps.
	ComponentTrustBundle = "trust-bundle"
)

var (
	certificateType = metav1.TypeMeta{APIVersion: cmapi.SchemeGroupVersion.String(), Kind: cmapi.CertificateKind}
	issuerType      = metav1.TypeMeta{APIVersion: cmapi.SchemeGroupVersion.String(), Kind: cmapi.IssuerKind}
	configMapType   = metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}
)

// IdentityStage is a step of a mesh's certificate chain: its objects can be applied once the Secret of the step
// before exists (cert-manager fails a certificate request whose CA issuer has no Secret yet, then backs off for an
// hour, so the chain is built one issued step at a time).
type IdentityStage struct {
	// Objects are the stage's Issuers and Certificate.
	Objects []client.Object
	// Certificate is the name of the stage's Certificate and of its Secret.
	Certificate string
	// NeedsSecret is the Secret that must exist before the stage is applied; "" for the first stage.
	NeedsSecret string
}

// IdentityStages returns the cert-manager objects behind a mesh's identity, in the control-plane namespace, in the
// order they can be issued.
//
// Without spec.identity.issuerRef: a self-signed Issuer and a trust-anchor Certificate (isCA, ECDSA P-256) issued by
// it; then a CA Issuer on the anchor's Secret and the identity-issuer Certificate (isCA, ECDSA P-256, rotationPolicy
// Always) issued by that CA. With issuerRef, the identity-issuer Certificate is issued by the user's issuer instead.
// Either way the last stage is a CA Issuer on the identity issuer and the identity service's serving Certificate
// (IdentityServingName), whose chain proxies verify with the trust bundle.
func IdentityStages(mesh *meshv1alpha1.Mesh) []IdentityStage {
	ns := mesh.Spec.ControlPlaneNamespace
	id := mesh.Spec.Identity
	var stages []IdentityStage
	issuerRef := cmmeta.IssuerReference{Name: TrustAnchorName(mesh), Kind: cmapi.IssuerKind, Group: "cert-manager.io"}
	issuerStage := IdentityStage{Certificate: IdentityIssuerName(mesh)}
	if id.IssuerRef != nil {
		issuerRef = cmmeta.IssuerReference{Name: id.IssuerRef.Name, Kind: id.IssuerRef.Kind, Group: id.IssuerRef.Group}
	} else {
		stages = append(stages, IdentityStage{Certificate: TrustAnchorName(mesh), Objects: []client.Object{
			&cmapi.Issuer{
				TypeMeta:   issuerType,
				ObjectMeta: meta(mesh, ns, selfSignedIssuerName(mesh), ComponentIdentity),
				Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}},
			},
			&cmapi.Certificate{
				TypeMeta:   certificateType,
				ObjectMeta: meta(mesh, ns, TrustAnchorName(mesh), ComponentIdentity),
				Spec: cmapi.CertificateSpec{
					CommonName: "root." + mesh.Spec.TrustDomain,
					IsCA:       true,
					Duration:   id.TrustAnchorLifetime,
					SecretName: TrustAnchorName(mesh),
					PrivateKey: ecdsaKey(cmapi.RotationPolicyAlways),
					Usages:     []cmapi.KeyUsage{cmapi.UsageCertSign, cmapi.UsageCRLSign},
					IssuerRef:  cmmeta.IssuerReference{Name: selfSignedIssuerName(mesh), Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
				},
			},
		}})
		issuerStage.NeedsSecret = TrustAnchorName(mesh)
		issuerStage.Objects = append(issuerStage.Objects, &cmapi.Issuer{
			TypeMeta:   issuerType,
			ObjectMeta: meta(mesh, ns, TrustAnchorName(mesh), ComponentIdentity),
			Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: TrustAnchorName(mesh)}}},
		})
	}
	issuerStage.Objects = append(issuerStage.Objects, identityIssuer(mesh, issuerRef))
	stages = append(stages, issuerStage)
	return append(stages, IdentityStage{
		Certificate: IdentityServingName(mesh), NeedsSecret: IdentityIssuerName(mesh), Objects: identityServing(mesh),
	})
}

// IdentityObjects returns every object of IdentityStages, in order.
func IdentityObjects(mesh *meshv1alpha1.Mesh) []client.Object {
	var objs []client.Object
	for _, st := range IdentityStages(mesh) {
		objs = append(objs, st.Objects...)
	}
	return objs
}

// identityIssuer is the identity-issuer Certificate: the CA whose key the identity service signs leaves with.
func identityIssuer(mesh *meshv1alpha1.Mesh, issuerRef cmmeta.IssuerReference) *cmapi.Certificate {
	id := mesh.Spec.Identity
	return &cmapi.Certificate{
		TypeMeta:   certificateType,
		ObjectMeta: meta(mesh, mesh.Spec.ControlPlaneNamespace, IdentityIssuerName(mesh), ComponentIdentity),
		Spec: cmapi.CertificateSpec{
			CommonName:  "identity." + mesh.Spec.TrustDomain,
			IsCA:        true,
			Duration:    id.IssuerLifetime,
			RenewBefore: id.IssuerRenewBefore,
			SecretName:  IdentityIssuerName(mesh),
			PrivateKey:  ecdsaKey(cmapi.RotationPolicyAlways),
			Usages:      []cmapi.KeyUsage{cmapi.UsageCertSign, cmapi.UsageCRLSign},
			IssuerRef:   issuerRef,
		},
	}
}

// identityServing returns a CA Issuer on the identity issuer and the identity service's serving Certificate from
// it, so that proxies verify the service with the mesh's trust bundle.
func identityServing(mesh *meshv1alpha1.Mesh) []client.Object {
	ns := mesh.Spec.ControlPlaneNamespace
	svc := wellknown.IdentityServiceName + "." + ns + ".svc"
	return []client.Object{
		&cmapi.Issuer{
			TypeMeta:   issuerType,
			ObjectMeta: meta(mesh, ns, IdentityIssuerName(mesh), ComponentIdentity),
			Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: IdentityIssuerName(mesh)}}},
		},
		&cmapi.Certificate{
			TypeMeta:   certificateType,
			ObjectMeta: meta(mesh, ns, IdentityServingName(mesh), ComponentIdentity),
			Spec: cmapi.CertificateSpec{
				DNSNames:    []string{svc, svc + ".cluster.local"},
				Duration:    &metav1.Duration{Duration: 24 * time.Hour},
				RenewBefore: &metav1.Duration{Duration: 8 * time.Hour},
				SecretName:  IdentityServingName(mesh),
				PrivateKey:  ecdsaKey(cmapi.RotationPolicyAlways),
				Usages:      []cmapi.KeyUsage{cmapi.UsageServerAuth, cmapi.UsageDigitalSignature},
				IssuerRef:   cmmeta.IssuerReference{Name: IdentityIssuerName(mesh), Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
			},
		},
	}
}

func ecdsaKey(rotation cmapi.PrivateKeyRotationPolicy) *cmapi.CertificatePrivateKey {
	return &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256, RotationPolicy: rotation}
}

// TrustAnchors returns the anchors to trust: every current anchor, then every previous anchor that has not
// expired at now, without duplicates. Current anchors come first, newest first, so the order is stable.
func TrustAnchors(current, previous []*x509.Certificate, now time.Time) []*x509.Certificate {
	seen := map[[32]byte]bool{}
	var out []*x509.Certificate
	add := func(certs []*x509.Certificate, checkExpiry bool) {
		sorted := append([]*x509.Certificate(nil), certs...)
		sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].NotBefore.After(sorted[j].NotBefore) })
		for _, c := range sorted {
			sum := sha256.Sum256(c.Raw)
			if seen[sum] || (checkExpiry && now.After(c.NotAfter)) {
				continue
			}
			seen[sum] = true
			out = append(out, c)
		}
	}
	add(current, false)
	add(previous, true)
	return out
}

// EncodePEM writes certificates as a PEM bundle.
func EncodePEM(certs []*x509.Certificate) string {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.String()
}

// TrustBundles returns the trust-bundle ConfigMap for every meshed namespace, and the record of anchors in the
// control-plane namespace from which the next reconcile learns the previous anchors.
func TrustBundles(mesh *meshv1alpha1.Mesh, namespaces []string, bundlePEM string) []client.Object {
	objs := make([]client.Object, 0, len(namespaces)+1)
	objs = append(objs, &corev1.ConfigMap{
		TypeMeta:   configMapType,
		ObjectMeta: meta(mesh, mesh.Spec.ControlPlaneNamespace, TrustAnchorRecordName(mesh), ComponentTrustBundle),
		Data:       map[string]string{TrustBundleKey: bundlePEM},
	})
	for _, ns := range namespaces {
		objs = append(objs, &corev1.ConfigMap{
			TypeMeta:   configMapType,
			ObjectMeta: meta(mesh, ns, TrustBundleName, ComponentTrustBundle),
			Data:       map[string]string{TrustBundleKey: bundlePEM},
		})
	}
	return objs
}
