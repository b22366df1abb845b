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

// oldestMesh returns the name of the oldest Mesh that is not being deleted, or "".
func oldestMesh(meshes []meshv1alpha1.Mesh) string {
	var oldest *meshv1alpha1.Mesh
	for i := range meshes {
		m := &meshes[i]
		if m.DeletionTimestamp.IsZero() && (oldest == nil || olderThan(m, oldest)) {
			oldest = m
		}
	}
	if oldest == nil {
		return ""
	}
	return oldest.Name
}

// unownedNamespaces returns the namespaces that no Mesh owns.
func unownedNamespaces(meshes []meshv1alpha1.Mesh, namespaces []corev1.Namespace) map[string]bool {
	owned := map[string]bool{}
	for i := range meshes {
		if !meshes[i].DeletionTimestamp.IsZero() {
			continue
		}
		mine, _ := namespaceClaims(&meshes[i], meshes, namespaces)
		for _, ns := range mine {
			owned[ns] = true
		}
	}
	out := map[string]bool{}
	for _, ns := range namespaces {
		if !owned[ns.Name] {
			out[ns.Name] = true
		}
	}
	return out
}

// owningMesh returns the Mesh that owns namespace ns, or the oldest Mesh when none does (it reports that
// objects there are not meshed), or "" when there is no Mesh.
func owningMesh(ns string, meshes []meshv1alpha1.Mesh, namespaces []corev1.Namespace) string {
	for i := range meshes {
		if !meshes[i].DeletionTimestamp.IsZero() {
			continue
		}
		mine, _ := namespaceClaims(&meshes[i], meshes, namespaces)
		for _, n := range mine {
			if n == ns {
				return meshes[i].Name
			}
		}
	}
	return oldestMesh(meshes)
}

// TrimPod is the manager's cache transform for Pods: it keeps what the reconciler reads (name, namespace, labels,
// annotations, ServiceAccount, phase, container names and readiness) and drops the rest, so caching every pod of a
// large cluster stays cheap.
func TrimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	trimmed := &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, ResourceVersion: pod.ResourceVersion,
			Labels: pod.Labels, Annotations: pod.Annotations, DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{ServiceAccountName: pod.Spec.ServiceAccountName, NodeName: pod.Spec.NodeName},
		Status: corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP},
	}
	trim := func(in []corev1.ContainerStatus) []corev1.ContainerStatus {
		out := make([]corev1.ContainerStatus, 0, len(in))
		for _, s := range in {
			out = append(out, corev1.ContainerStatus{Name: s.Name, Ready: s.Ready, Started: s.Started})
		}
		return out
	}
	trimmed.Status.ContainerStatuses = trim(pod.Status.ContainerStatuses)
	trimmed.Status.InitContainerStatuses = trim(pod.Status.InitContainerStatuses)
	return trimmed, nil
}
