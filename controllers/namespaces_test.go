package controllers

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
)

func ns(name string, labels map[string]string) corev1.Namespace {
	return corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func mesh(name string, created time.Time, sel *metav1.LabelSelector) meshv1alpha1.Mesh {
	return meshv1alpha1.Mesh{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(created)},
		Spec:       meshv1alpha1.MeshSpec{NamespaceSelector: sel, ControlPlaneNamespace: "trellis-system"},
	}
}

func TestSelectedNamespaces(t *testing.T) {
	inject := &metav1.LabelSelector{MatchLabels: map[string]string{"trellis.io/inject": "enabled"}}
	on := map[string]string{"trellis.io/inject": "enabled"}
	terminating := ns("leaving", on)
	terminating.Status.Phase = corev1.NamespaceTerminating
	all := []corev1.Namespace{
		ns("b", on), ns("a", on), ns("off", nil), ns("kube-system", on), ns("trellis-system", on), terminating,
	}
	cases := []struct {
		name string
		sel  *metav1.LabelSelector
		want []string
	}{
		{"label selector, sorted, system and control plane left out", inject, []string{"a", "b"}},
		{"empty selector selects every non-system namespace", &metav1.LabelSelector{}, []string{"a", "b", "off"}},
		{"nil selector selects nothing", nil, nil},
		{"invalid selector selects nothing", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "x", Operator: "Bogus"}}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := mesh("m", time.Now(), tc.sel)
			if got := selectedNamespaces(&m, all); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNamespaceClaimsOlderMeshWins(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	everything := &metav1.LabelSelector{}
	teamA := &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}
	namespaces := []corev1.Namespace{ns("a1", map[string]string{"team": "a"}), ns("b1", map[string]string{"team": "b"})}
	old := mesh("old", t0, teamA)
	young := mesh("young", t0.Add(time.Minute), everything)
	tie := mesh("aaa", t0, everything) // same age as old, smaller name: older by the tie-break
	meshes := []meshv1alpha1.Mesh{old, young}

	owned, taken := namespaceClaims(&young, meshes, namespaces)
	if !reflect.DeepEqual(owned, []string{"b1"}) || !reflect.DeepEqual(taken, map[string]string{"a1": "old"}) {
		t.Fatalf("young: owned %v taken %v", owned, taken)
	}
	owned, taken = namespaceClaims(&old, meshes, namespaces)
	if !reflect.DeepEqual(owned, []string{"a1"}) || len(taken) != 0 {
		t.Fatalf("old: owned %v taken %v", owned, taken)
	}
	owned, taken = namespaceClaims(&old, []meshv1alpha1.Mesh{old, tie}, namespaces)
	if len(owned) != 0 || taken["a1"] != "aaa" {
		t.Fatalf("tie-break: owned %v taken %v", owned, taken)
	}
}

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
	setProxiesReady(m, pods)
	if m.Status.Proxies.Desired != 3 || m.Status.Proxies.Ready != 2 || m.Status.Conditions[0].Reason != meshv1alpha1.ReasonProxiesNotReady {
		t.Fatalf("status %+v", m.Status)
	}
}
