package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/meshns"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// ShouldInject decides whether a pod (or pod template) gets a proxy, and says why in a sentence. The rules, first
// match wins:
//  1. pods in kube-system, kube-public, kube-node-lease and the control-plane namespace never do;
//  2. a pod labelled or annotated trellis.io/inject=disabled does not;
//  3. a pod labelled or annotated trellis.io/inject=enabled does;
//  4. a pod in a namespace labelled trellis.io/inject=enabled does;
//  5. any other pod does not.
//
// A nil ns is a namespace with no name and no labels. When a pod's label and annotation disagree, disabled wins.
func ShouldInject(ns *corev1.Namespace, podMeta *metav1.ObjectMeta, controlPlaneNamespace string) (bool, string) {
	var nsName string
	var nsLabels map[string]string
	if ns != nil {
		nsName, nsLabels = ns.Name, ns.Labels
	}
	if meshns.System[nsName] {
		return false, fmt.Sprintf("namespace %s is a system namespace, which is never meshed", nsName)
	}
	if nsName != "" && nsName == controlPlaneNamespace {
		return false, fmt.Sprintf("namespace %s is the mesh's control-plane namespace, which is never meshed", nsName)
	}
	switch podSetting(podMeta) {
	case wellknown.InjectDisabled:
		return false, fmt.Sprintf("the pod opts out with %s=%s", wellknown.LabelInject, wellknown.InjectDisabled)
	case wellknown.InjectEnabled:
		return true, fmt.Sprintf("the pod opts in with %s=%s", wellknown.LabelInject, wellknown.InjectEnabled)
	}
	if nsLabels[wellknown.LabelInject] == wellknown.InjectEnabled {
		return true, fmt.Sprintf("namespace %s is labelled %s=%s", nsName, wellknown.LabelInject, wellknown.InjectEnabled)
	}
	return false, fmt.Sprintf("neither the pod nor namespace %s is labelled %s=%s", nsName, wellknown.LabelInject,
		wellknown.InjectEnabled)
}

// podSetting returns the pod's trellis.io/inject setting from its label and annotation: disabled when either says
// disabled, else enabled when either says enabled, else "".
func podSetting(meta *metav1.ObjectMeta) string {
	if meta == nil {
		return ""
	}
	label, annotation := meta.Labels[wellknown.LabelInject], meta.Annotations[wellknown.LabelInject]
	switch {
	case label == wellknown.InjectDisabled || annotation == wellknown.InjectDisabled:
		return wellknown.InjectDisabled
	case label == wellknown.InjectEnabled || annotation == wellknown.InjectEnabled:
		return wellknown.InjectEnabled
	}
	return ""
}

// LabelPodSecurityEnforce is the Pod Security Admission label that sets the standard a namespace enforces.
const LabelPodSecurityEnforce = "pod-security.kubernetes.io/enforce"

// CheckNamespace returns an error when the namespace would reject an injected pod: Pod Security Admission's
// baseline and restricted levels forbid trellis-init's NET_ADMIN and NET_RAW capabilities, so injecting there
// would turn a pod that starts into a pod that is refused. A nil namespace passes.
func CheckNamespace(ns *corev1.Namespace) error {
	if ns == nil {
		return nil
	}
	switch level := ns.Labels[LabelPodSecurityEnforce]; level {
	case "baseline", "restricted":
		return fmt.Errorf("namespace %s enforces the %s Pod Security Standard (%s=%s), which forbids the NET_ADMIN "+
			"and NET_RAW capabilities trellis-init needs to redirect traffic", ns.Name, level, LabelPodSecurityEnforce, level)
	}
	return nil
}
