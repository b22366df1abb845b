// Package render turns a snapshot of a mesh into the Kubernetes objects the mesh needs. Every function here is
// pure: no client, no clock, no randomness. The reconciler reads the snapshot, calls these functions and applies
// what they return; tests compare their output with golden files (go test ./internal/render -update rewrites them).
package render

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// Labels and annotations on every object the manager renders.
const (
	// LabelMesh names the Mesh an object belongs to; the reconciler prunes by it.
	LabelMesh = "mesh.trellis.io/mesh"
	// LabelManagedBy marks objects the manager owns.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of LabelManagedBy.
	ManagedByValue = "trellis"
	// LabelComponent says what part of the mesh an object is.
	LabelComponent = "app.kubernetes.io/component"
	// AnnotationConfigHash carries the content hash of a proxy configuration.
	AnnotationConfigHash = "mesh.trellis.io/config-hash"
)

// meta returns the object metadata of a rendered object: its name, namespace, the mesh's labels, and an
// owner reference to the Mesh so that deleting the Mesh deletes it.
func meta(mesh *meshv1alpha1.Mesh, namespace, name, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:      name,
		Namespace: namespace,
		Labels: map[string]string{
			LabelMesh:      mesh.Name,
			LabelManagedBy: ManagedByValue,
			LabelComponent: component,
		},
		OwnerReferences: []metav1.OwnerReference{{
			APIVersion:         meshv1alpha1.GroupVersion.String(),
			Kind:               "Mesh",
			Name:               mesh.Name,
			UID:                mesh.UID,
			Controller:         ptr.To(true),
			BlockOwnerDeletion: ptr.To(true),
		}},
	}
}

// Names of the objects rendered for a mesh. Objects in the control-plane namespace carry the mesh's name so that
// several meshes can share one control-plane namespace.
func selfSignedIssuerName(m *meshv1alpha1.Mesh) string { return m.Name + "-selfsigned" }

// TrustAnchorName is the name of the trust-anchor Certificate, its Secret and the CA Issuer built on it.
func TrustAnchorName(m *meshv1alpha1.Mesh) string { return m.Name + "-trust-anchor" }

// IdentityIssuerName is the name of the identity-issuer Certificate and its Secret, whose key signs workload
// certificates.
func IdentityIssuerName(m *meshv1alpha1.Mesh) string { return m.Name + "-identity-issuer" }

// IdentityServingName is the name of the identity service's serving Certificate and Secret.
func IdentityServingName(m *meshv1alpha1.Mesh) string { return m.Name + "-identity-service" }

// TrustBundleName is the name of the ConfigMap holding the PEM trust roots, in every meshed namespace, and of
// the record of previous anchors in the control-plane namespace.
const TrustBundleName = wellknown.TrustBundleName

// TrustBundleKey is the ConfigMap key of the PEM bundle.
const TrustBundleKey = wellknown.TrustBundleKey

// TrustAnchorRecordName is the ConfigMap in the control-plane namespace that remembers the anchors the mesh has
// trusted, so that a rotated-out anchor stays in bundles until it expires.
func TrustAnchorRecordName(m *meshv1alpha1.Mesh) string { return m.Name + "-trust-anchors" }
