package controllers

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// proxyCounts counts the injected pods that should run a proxy (not finished, not being deleted) and those whose
// proxy container is ready, and names up to five that are not.
func proxyCounts(pods []corev1.Pod) (desired, ready int32, notReady []string) {
	for i := range pods {
		p := &pods[i]
		if p.Annotations[wellknown.AnnotationInjected] == "" || !p.DeletionTimestamp.IsZero() ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		desired++
		if proxyReady(p) {
			ready++
		} else {
			notReady = append(notReady, p.Namespace+"/"+p.Name)
		}
	}
	sort.Strings(notReady)
	return desired, ready, notReady
}

// proxyReady reports whether the pod's proxy container (a native sidecar or a regular container) is ready.
func proxyReady(p *corev1.Pod) bool {
	for _, list := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses} {
		for _, s := range list {
			if s.Name == inject.ProxyContainerName {
				return s.Ready
			}
		}
	}
	return false
}

// setProxiesReady records the proxy counts and the ProxiesReady condition.
func setProxiesReady(m *meshv1alpha1.Mesh, pods []corev1.Pod) {
	desired, ready, notReady := proxyCounts(pods)
	m.Status.Proxies.Desired, m.Status.Proxies.Ready = desired, ready
	if len(notReady) == 0 {
		msg := fmt.Sprintf("All %d proxies are ready", desired)
		if desired == 0 {
			msg = "No meshed pods yet: label a namespace trellis.io/inject=enabled and restart its pods"
		}
		setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionProxiesReady, true, meshv1alpha1.ReasonReady, msg)
		return
	}
	shown := notReady
	if len(shown) > 5 {
		shown = shown[:5]
	}
	setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionProxiesReady, false, meshv1alpha1.ReasonProxiesNotReady,
		fmt.Sprintf("%d of %d proxies are not ready (%s); see kubectl describe pod and the trellis-proxy container's log",
			len(notReady), desired, strings.Join(shown, ", ")))
}
