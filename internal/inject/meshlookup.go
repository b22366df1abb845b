package inject

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// MeshLookup finds the Mesh a namespace belongs to.
type MeshLookup interface {
	// MeshForNamespace returns the Mesh that owns namespace, or nil when the namespace belongs to no Mesh.
	MeshForNamespace(ctx context.Context, namespace string) (*meshv1alpha1.Mesh, error)
}

// ClientMeshLookup is a MeshLookup that reads Namespaces and Meshes through a client (the manager's cached
// client). A namespace belongs to the oldest Mesh (by creation time, then name) that is not being deleted and
// whose namespaceSelector matches it; system namespaces, a Mesh's own control-plane namespace and terminating
// namespaces belong to none. These are the reconciler's rules, so the webhook injects where the reconciler writes
// trust bundles and proxy configuration.
type ClientMeshLookup struct {
	// Reader reads Namespaces and Meshes. Required.
	Reader client.Reader
}

var _ MeshLookup = ClientMeshLookup{}

// MeshForNamespace implements MeshLookup.
func (l ClientMeshLookup) MeshForNamespace(ctx context.Context, namespace string) (*meshv1alpha1.Mesh, error) {
	ns := &corev1.Namespace{}
	if err := l.Reader.Get(ctx, client.ObjectKey{Name: namespace}, ns); err != nil {
		return nil, fmt.Errorf("reading namespace %s: %w", namespace, err)
	}
	meshes := &meshv1alpha1.MeshList{}
	if err := l.Reader.List(ctx, meshes); err != nil {
		return nil, fmt.Errorf("listing meshes: %w", err)
	}
	return OwningMesh(ns, meshes.Items), nil
}

// OwningMesh returns the Mesh among meshes that owns ns under ClientMeshLookup's rules, or nil.
func OwningMesh(ns *corev1.Namespace, meshes []meshv1alpha1.Mesh) *meshv1alpha1.Mesh {
	if systemNamespaces[ns.Name] || ns.Status.Phase == corev1.NamespaceTerminating {
		return nil
	}
	var owner *meshv1alpha1.Mesh
	for i := range meshes {
		m := &meshes[i]
		if !m.DeletionTimestamp.IsZero() || ns.Name == orDefault(m.Spec.ControlPlaneNamespace, DefaultControlPlaneNamespace) ||
			!selects(m, ns) {
			continue
		}
		if owner == nil || olderThan(m, owner) {
			owner = m
		}
	}
	return owner
}

// selects reports whether the Mesh's namespaceSelector matches ns; an unset selector is the API default,
// trellis.io/inject=enabled, and an invalid one matches nothing.
func selects(m *meshv1alpha1.Mesh, ns *corev1.Namespace) bool {
	ls := m.Spec.NamespaceSelector
	if ls == nil {
		ls = &metav1.LabelSelector{MatchLabels: map[string]string{wellknown.LabelInject: wellknown.InjectEnabled}}
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	return err == nil && sel.Matches(labels.Set(ns.Labels))
}

func olderThan(a, b *meshv1alpha1.Mesh) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}
