// Package meshns holds the rules that decide which Mesh a namespace belongs to. The reconciler (which writes trust
// bundles and proxy configuration into a mesh's namespaces) and the injector (which adds proxies to their pods)
// both follow them, so they always agree.
//
// A Mesh selects the namespaces its namespaceSelector matches (unset means the API default,
// trellis.io/inject=enabled), except the system namespaces, its control-plane namespace and terminating
// namespaces. A namespace two meshes select belongs to the older one (by creation time, then name).
package meshns

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// System are the namespaces that are never meshed, whatever a selector says.
var System = map[string]bool{"kube-system": true, "kube-public": true, "kube-node-lease": true}

// DefaultControlPlaneNamespace is the API default of spec.controlPlaneNamespace.
const DefaultControlPlaneNamespace = "trellis-system"

// Selects reports whether mesh selects ns (before conflicts with other meshes are settled).
func Selects(mesh *meshv1alpha1.Mesh, ns *corev1.Namespace) bool {
	cp := mesh.Spec.ControlPlaneNamespace
	if cp == "" {
		cp = DefaultControlPlaneNamespace
	}
	if System[ns.Name] || ns.Name == cp || ns.Status.Phase == corev1.NamespaceTerminating {
		return false
	}
	ls := mesh.Spec.NamespaceSelector
	if ls == nil {
		ls = &metav1.LabelSelector{MatchLabels: map[string]string{wellknown.LabelInject: wellknown.InjectEnabled}}
	}
	sel, err := metav1.LabelSelectorAsSelector(ls)
	return err == nil && sel.Matches(labels.Set(ns.Labels))
}

// Selected returns the names of the namespaces mesh selects, sorted.
func Selected(mesh *meshv1alpha1.Mesh, namespaces []corev1.Namespace) []string {
	var out []string
	for i := range namespaces {
		if Selects(mesh, &namespaces[i]) {
			out = append(out, namespaces[i].Name)
		}
	}
	sort.Strings(out)
	return out
}

// OlderThan orders meshes by age: the older mesh keeps a namespace two meshes select. Ties go to the smaller name.
func OlderThan(a, b *meshv1alpha1.Mesh) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// Claims splits the namespaces mesh selects into those it owns and those an older mesh owns, keyed by namespace
// with the owning mesh's name as value.
func Claims(mesh *meshv1alpha1.Mesh, meshes []meshv1alpha1.Mesh, namespaces []corev1.Namespace) (owned []string, taken map[string]string) {
	claimedBy := map[string]string{}
	for i := range meshes {
		other := &meshes[i]
		if other.Name == mesh.Name || !other.DeletionTimestamp.IsZero() || !OlderThan(other, mesh) {
			continue
		}
		for _, ns := range Selected(other, namespaces) {
			if _, ok := claimedBy[ns]; !ok {
				claimedBy[ns] = other.Name
			}
		}
	}
	taken = map[string]string{}
	for _, ns := range Selected(mesh, namespaces) {
		if owner, ok := claimedBy[ns]; ok {
			taken[ns] = owner
			continue
		}
		owned = append(owned, ns)
	}
	return owned, taken
}

// Owner returns the Mesh that owns ns: the oldest Mesh not being deleted that selects it, or nil.
func Owner(ns *corev1.Namespace, meshes []meshv1alpha1.Mesh) *meshv1alpha1.Mesh {
	var owner *meshv1alpha1.Mesh
	for i := range meshes {
		m := &meshes[i]
		if m.DeletionTimestamp.IsZero() && Selects(m, ns) && (owner == nil || OlderThan(m, owner)) {
			owner = m
		}
	}
	return owner
}

// Oldest returns the name of the oldest Mesh that is not being deleted, or "".
func Oldest(meshes []meshv1alpha1.Mesh) string {
	var oldest *meshv1alpha1.Mesh
	for i := range meshes {
		m := &meshes[i]
		if m.DeletionTimestamp.IsZero() && (oldest == nil || OlderThan(m, oldest)) {
			oldest = m
		}
	}
	if oldest == nil {
		return ""
	}
	return oldest.Name
}

// Unowned returns the names of the namespaces no Mesh owns.
func Unowned(meshes []meshv1alpha1.Mesh, namespaces []corev1.Namespace) map[string]bool {
	out := map[string]bool{}
	for i := range namespaces {
		if Owner(&namespaces[i], meshes) == nil {
			out[namespaces[i].Name] = true
		}
	}
	return out
}
