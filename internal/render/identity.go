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

// IdentityObjects returns the cert-manager objects behind a mesh's identity, in the control-plane namespace.
//
// Without spec.identity.issuerRef: a self-signed Issuer, a trust-anchor Certificate (isCA, ECDSA P-256) issued by
// it, a CA Issuer on the anchor's Secret, and the identity-issuer Certificate (isCA, ECDSA P-256, rotationPolicy
// Always) issued by that CA. With issuerRef: only the identity-issuer Certificate, issued by the user's issuer.
func IdentityObjects(mesh *meshv1alpha1.Mesh) []client.Object {
	ns := mesh.Spec.ControlPlaneNamespace
	id := mesh.Spec.Identity
	issuerRef := cmmeta.IssuerReference{Name: TrustAnchorName(mesh), Kind: cmapi.IssuerKind, Group: "cert-manager.io"}
	var objs []client.Object
	if id.IssuerRef != nil {
		issuerRef = cmmeta.IssuerReference{Name: id.IssuerRef.Name, Kind: id.IssuerRef.Kind, Group: id.IssuerRef.Group}
	} else {
		objs = append(objs,
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
			&cmapi.Issuer{
				TypeMeta:   issuerType,
				ObjectMeta: meta(mesh, ns, TrustAnchorName(mesh), ComponentIdentity),
				Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: TrustAnchorName(mesh)}}},
			},
		)
	}
	objs = append(objs, &cmapi.Certificate{
		TypeMeta:   certificateType,
		ObjectMeta: meta(mesh, ns, IdentityIssuerName(mesh), ComponentIdentity),
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
	})
	return objs
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
