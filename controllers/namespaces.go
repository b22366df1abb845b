package controllers

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
)

// systemNamespaces are never meshed, whatever a selector says.
var systemNamespaces = map[string]bool{"kube-system": true, "kube-public": true, "kube-node-lease": true}

// selectedNamespaces returns the names of the namespaces mesh selects, sorted. Terminating namespaces, system
// namespaces and the mesh's control-plane namespace are left out. An invalid selector selects nothing.
func selectedNamespaces(mesh *meshv1alpha1.Mesh, namespaces []corev1.Namespace) []string {
	if mesh.Spec.NamespaceSelector == nil {
		return nil
	}
	sel, err := metav1.LabelSelectorAsSelector(mesh.Spec.NamespaceSelector)
	if err != nil {
		return nil
	}
	var out []string
	for i := range namespaces {
		ns := &namespaces[i]
		if systemNamespaces[ns.Name] || ns.Name == mesh.Spec.ControlPlaneNamespace ||
			ns.Status.Phase == corev1.NamespaceTerminating || !sel.Matches(labels.Set(ns.Labels)) {
			continue
		}
		out = append(out, ns.Name)
	}
	sort.Strings(out)
	return out
}

// olderThan orders meshes by age: the older mesh keeps a namespace two meshes select. Ties go to the smaller name.
func olderThan(a, b *meshv1alpha1.Mesh) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// namespaceClaims splits the namespaces mesh selects into those it owns and those an older mesh already owns,
// keyed by namespace with the owning mesh's name as value.
func namespaceClaims(mesh *meshv1alpha1.Mesh, meshes []meshv1alpha1.Mesh, namespaces []corev1.Namespace) (owned []string, taken map[string]string) {
	selected := selectedNamespaces(mesh, namespaces)
	claimedBy := map[string]string{}
	for i := range meshes {
		other := &meshes[i]
		if other.Name == mesh.Name || !other.DeletionTimestamp.IsZero() || !olderThan(other, mesh) {
			continue
		}
		for _, ns := range selectedNamespaces(other, namespaces) {
			if _, ok := claimedBy[ns]; !ok {
				claimedBy[ns] = other.Name
			}
		}
	}
	taken = map[string]string{}
	for _, ns := range selected {
		if owner, ok := claimedBy[ns]; ok {
			taken[ns] = owner
			continue
		}
		owned = append(owned, ns)
	}
	return owned, taken
}
