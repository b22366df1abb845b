package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
)

func TestConflictMessageIsActionable(t *testing.T) {
	got := conflictMessage(map[string]string{"shop": "first", "web": "first", "db": "other"})
	want := `the older Mesh "first" already owns namespace(s) shop, web; the older Mesh "other" already owns namespace(s) db: ` +
		`they are left out of this Mesh. Narrow spec.namespaceSelector so that every namespace belongs to one Mesh.`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestRunChainReportsFirstFailure(t *testing.T) {
	var conds []metav1.Condition
	setCondition(&conds, 3, "A", true, "Fine", "")
	setCondition(&conds, 3, "B", false, "Broken", "fix B")
	setCondition(&conds, 3, "C", false, "AlsoBroken", "fix C")
	if reason, msg, ok := runChain(conds, conditionTrue("A"), conditionTrue("B"), conditionTrue("C")); ok || reason != "Broken" || msg != "fix B" {
		t.Fatalf("got %s %q %v", reason, msg, ok)
	}
	if reason, _, ok := runChain(conds, conditionTrue("A"), conditionTrue("Missing")); ok || reason != "Pending" {
		t.Fatalf("missing condition: got %s %v", reason, ok)
	}
	if _, _, ok := runChain(conds, conditionTrue("A")); !ok {
		t.Fatal("all true should be ok")
	}
	if conds[0].ObservedGeneration != 3 {
		t.Fatalf("generation not stamped: %+v", conds[0])
	}
}

func TestProxyCounts(t *testing.T) {
	injected := func(name string, phase corev1.PodPhase, ready, native bool) corev1.Pod {
		p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: map[string]string{"mesh.trellis.io/injected": "m"}}}
		p.Status.Phase = phase
		st := []corev1.ContainerStatus{{Name: "trellis-proxy", Ready: ready}}
		if native {
			p.Status.InitContainerStatuses = st
		} else {
			p.Status.ContainerStatuses = st
		}
		return p
	}
	plain := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "plain"}}
	pods := []corev1.Pod{
		injected("a", corev1.PodRunning, true, true),
		injected("b", corev1.PodRunning, false, true),
		injected("c", corev1.PodRunning, true, false),
		injected("done", corev1.PodSucceeded, false, true),
		plain,
	}
	desired, ready, notReady := proxyCounts(pods)
	if desired != 3 || ready != 2 || len(notReady) != 1 || notReady[0] != "ns/b" {
		t.Fatalf("desired %d ready %d notReady %v", desired, ready, notReady)
	}
	m := &meshv1alpha1.Mesh{}
	setProxiesReady(m, pods, nil)
	if m.Status.Proxies.Desired != 3 || m.Status.Proxies.Ready != 2 || m.Status.Conditions[0].Reason != meshv1alpha1.ReasonProxiesNotReady {
		t.Fatalf("status %+v", m.Status)
	}
}
