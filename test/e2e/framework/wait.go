package framework

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// PollInterval is how often the Wait helpers look.
const PollInterval = 500 * time.Millisecond

// WaitFor polls check until it returns true, returns an error, or timeout passes. The timeout error names what
// was awaited and the last error seen.
func (e *Env) WaitFor(ctx context.Context, timeout time.Duration, what string, check func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	for {
		ok, err := check(ctx)
		if ok {
			return nil
		}
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		case <-t.C:
		}
	}
}

// WaitDeploymentAvailable waits until every replica of a Deployment's current generation is updated and available.
func (e *Env) WaitDeploymentAvailable(ctx context.Context, namespace, name string, timeout time.Duration) error {
	return e.WaitFor(ctx, timeout, "deployment "+namespace+"/"+name+" available", func(ctx context.Context) (bool, error) {
		var d appsv1.Deployment
		if err := e.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &d); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		s := d.Status
		return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == want && s.AvailableReplicas == want &&
			s.Replicas == want, nil
	})
}

// WaitPodsReady waits until at least min pods match the selector and all of them are Ready; it returns them.
func (e *Env) WaitPodsReady(ctx context.Context, namespace, selector string, min int, timeout time.Duration) ([]corev1.Pod, error) {
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, err
	}
	var pods corev1.PodList
	err = e.WaitFor(ctx, timeout, fmt.Sprintf("%d pods %q in %s Ready", min, selector, namespace), func(ctx context.Context) (bool, error) {
		if err := e.Client.List(ctx, &pods, client.InNamespace(namespace), client.MatchingLabelsSelector{Selector: sel}); err != nil {
			return false, err
		}
		if len(pods.Items) < min {
			return false, nil
		}
		for i := range pods.Items {
			if !PodReady(&pods.Items[i]) {
				return false, nil
			}
		}
		return true, nil
	})
	return pods.Items, err
}

// WaitPodPhase waits until a pod reaches one of the phases (e.g. Succeeded for a client pod) and returns it.
// A pod that ends in a phase not asked for is an error.
func (e *Env) WaitPodPhase(ctx context.Context, namespace, name string, timeout time.Duration, phases ...corev1.PodPhase) (*corev1.Pod, error) {
	var pod corev1.Pod
	err := e.WaitFor(ctx, timeout, fmt.Sprintf("pod %s/%s %v", namespace, name, phases), func(ctx context.Context) (bool, error) {
		if err := e.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &pod); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		for _, p := range phases {
			if pod.Status.Phase == p {
				return true, nil
			}
		}
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			return false, fmt.Errorf("pod ended %s", pod.Status.Phase)
		}
		return false, nil
	})
	return &pod, err
}

// PodReady reports whether the pod's Ready condition is True.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// WaitCondition waits until obj (any kind with status.conditions, e.g. a Mesh or a cert-manager Certificate, as
// unstructured with apiVersion, kind, namespace and name set) has condition type with the given status, and
// returns the object as last read.
func (e *Env) WaitCondition(ctx context.Context, obj *unstructured.Unstructured, condType, status string, timeout time.Duration) (*unstructured.Unstructured, error) {
	u := obj.DeepCopy()
	err := e.WaitFor(ctx, timeout, fmt.Sprintf("%s %s condition %s=%s", obj.GetKind(), client.ObjectKeyFromObject(obj), condType, status),
		func(ctx context.Context) (bool, error) {
			if err := e.Client.Get(ctx, client.ObjectKeyFromObject(obj), u); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			c, ok := Condition(u, condType)
			return ok && c["status"] == status, nil
		})
	return u, err
}

// Conditions returns status.conditions of an unstructured object.
func Conditions(u *unstructured.Unstructured) []map[string]any {
	list, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	var out []map[string]any
	for _, c := range list {
		if m, ok := c.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// Condition returns the condition of the given type from status.conditions.
func Condition(u *unstructured.Unstructured, condType string) (map[string]any, bool) {
	for _, c := range Conditions(u) {
		if c["type"] == condType {
			return c, true
		}
	}
	return nil, false
}
