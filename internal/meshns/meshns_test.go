package meshns

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
		{"nil selector is the API default, trellis.io/inject=enabled", nil, []string{"a", "b"}},
		{"invalid selector selects nothing", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "x", Operator: "Bogus"}}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := mesh("m", time.Now(), tc.sel)
			if got := Selected(&m, all); !reflect.DeepEqual(got, tc.want) {
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

	owned, taken := Claims(&young, meshes, namespaces)
	if !reflect.DeepEqual(owned, []string{"b1"}) || !reflect.DeepEqual(taken, map[string]string{"a1": "old"}) {
		t.Fatalf("young: owned %v taken %v", owned, taken)
	}
	owned, taken = Claims(&old, meshes, namespaces)
	if !reflect.DeepEqual(owned, []string{"a1"}) || len(taken) != 0 {
		t.Fatalf("old: owned %v taken %v", owned, taken)
	}
	owned, taken = Claims(&old, []meshv1alpha1.Mesh{old, tie}, namespaces)
	if len(owned) != 0 || taken["a1"] != "aaa" {
		t.Fatalf("tie-break: owned %v taken %v", owned, taken)
	}
}

func TestOwnerOldestUnowned(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	teamA := &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}
	namespaces := []corev1.Namespace{ns("a1", map[string]string{"team": "a"}), ns("b1", map[string]string{"team": "b"})}
	young := mesh("young", t0.Add(time.Minute), teamA)
	old := mesh("old", t0, teamA)
	deleting := mesh("deleting", t0.Add(-time.Hour), teamA)
	deleting.DeletionTimestamp = &metav1.Time{Time: t0}
	meshes := []meshv1alpha1.Mesh{young, old, deleting}
	if got := Owner(&namespaces[0], meshes); got == nil || got.Name != "old" {
		t.Fatalf("owner of a1: %v", got)
	}
	if got := Owner(&namespaces[1], meshes); got != nil {
		t.Fatalf("b1 should have no owner, got %s", got.Name)
	}
	if got := Oldest(meshes); got != "old" {
		t.Fatalf("oldest: %s", got)
	}
	if got := Unowned(meshes, namespaces); !reflect.DeepEqual(got, map[string]bool{"b1": true}) {
		t.Fatalf("unowned: %v", got)
	}
}
