package controllers

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/meshns"
)

// owningMesh returns the name of the Mesh that owns namespace ns, or the oldest Mesh when none does (it reports
// that objects there are not meshed), or "" when there is no Mesh.
func owningMesh(ns string, meshes []meshv1alpha1.Mesh, namespaces []corev1.Namespace) string {
	for i := range namespaces {
		if namespaces[i].Name == ns {
			if owner := meshns.Owner(&namespaces[i], meshes); owner != nil {
				return owner.Name
			}
		}
	}
	return meshns.Oldest(meshes)
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
