package inject

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/meshns"
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

// OwningMesh returns the Mesh among meshes that owns ns (see package meshns), or nil.
func OwningMesh(ns *corev1.Namespace, meshes []meshv1alpha1.Mesh) *meshv1alpha1.Mesh {
	return meshns.Owner(ns, meshes)
}
