package controllers

import (
	"fmt"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// proxyCounts counts the pods with an injected proxy that should run (not finished, not being deleted) and those
// whose proxy container is ready, and names up to five that are not. Pods the node proxy serves run no proxy of
// their own: the node proxy DaemonSet counts for them.
func proxyCounts(pods []corev1.Pod) (desired, ready int32, notReady []string) {
	for i := range pods {
		p := &pods[i]
		if p.Annotations[wellknown.AnnotationInjected] == "" || p.Labels[wellknown.LabelProxy] == wellknown.ProxyNode ||
			!p.DeletionTimestamp.IsZero() || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
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

// nodeProxyCounts returns the node proxy DaemonSet's desired and ready pods and, when they are not all ready (or
// the DaemonSet controller has not seen its latest spec yet), what to tell the user.
func nodeProxyCounts(ds *appsv1.DaemonSet) (desired, ready int32, notReady string) {
	st := ds.Status
	desired, ready = st.DesiredNumberScheduled, st.NumberReady
	switch {
	case ds.ResourceVersion == "":
		notReady = fmt.Sprintf("the node proxy DaemonSet %s/%s is being created", ds.Namespace, ds.Name)
	case st.ObservedGeneration < ds.Generation || st.UpdatedNumberScheduled < desired:
		notReady = fmt.Sprintf("the node proxy DaemonSet %s/%s is rolling out (%d of %d node proxies updated)",
			ds.Namespace, ds.Name, st.UpdatedNumberScheduled, desired)
	case ready < desired:
		notReady = fmt.Sprintf("%d of %d node proxies of DaemonSet %s/%s are not ready", desired-ready, desired, ds.Namespace, ds.Name)
	}
	return desired, ready, notReady
}

// setProxiesReady records the proxy counts (injected sidecars, plus the node proxies of ds in DaemonSet mode; ds
// is nil otherwise) and the ProxiesReady condition.
func setProxiesReady(m *meshv1alpha1.Mesh, pods []corev1.Pod, ds *appsv1.DaemonSet) {
	desired, ready, notReady := proxyCounts(pods)
	nodeMsg := ""
	if ds != nil {
		d, r, msg := nodeProxyCounts(ds)
		desired, ready, nodeMsg = desired+d, ready+r, msg
	}
	m.Status.Proxies.Desired, m.Status.Proxies.Ready = desired, ready
	if len(notReady) == 0 && nodeMsg == "" {
		msg := fmt.Sprintf("All %d proxies are ready", desired)
		if desired == 0 {
			msg = "No meshed pods yet: label a namespace trellis.io/inject=enabled and restart its pods"
		}
		setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionProxiesReady, true, meshv1alpha1.ReasonReady, msg)
		return
	}
	var parts []string
	if nodeMsg != "" {
		parts = append(parts, nodeMsg+"; see kubectl describe daemonset and the node proxies' logs")
	}
	if len(notReady) > 0 {
		shown := notReady
		if len(shown) > 5 {
			shown = shown[:5]
		}
		parts = append(parts, fmt.Sprintf("%d proxies are not ready (%s); see kubectl describe pod and the trellis-proxy container's log",
			len(notReady), strings.Join(shown, ", ")))
	}
	setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionProxiesReady, false, meshv1alpha1.ReasonProxiesNotReady,
		fmt.Sprintf("%d of %d proxies are ready: %s", ready, desired, strings.Join(parts, "; ")))
}
