package validation

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
)

func validMesh() *meshv1alpha1.Mesh {
	return &meshv1alpha1.Mesh{Spec: meshv1alpha1.MeshSpec{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"trellis.io/inject": "enabled"}},
		Identity: meshv1alpha1.IdentitySpec{
			IssuerRenewBefore:    &metav1.Duration{Duration: 25 * time.Hour},
			WorkloadCertLifetime: &metav1.Duration{Duration: 24 * time.Hour},
		},
		Proxy:   meshv1alpha1.ProxySpec{Ports: meshv1alpha1.ProxyPorts{Outbound: 4140, Inbound: 4143, Admin: 4191}},
		Traffic: meshv1alpha1.TrafficDefaults{RetryBudget: meshv1alpha1.RetryBudget{Ratio: "0.2"}},
	}}
}

func TestMesh(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*meshv1alpha1.Mesh)
		want   string // substring of the error; "" means valid
	}{
		{"valid", func(*meshv1alpha1.Mesh) {}, ""},
		{"selector operator needs values", func(m *meshv1alpha1.Mesh) {
			m.Spec.NamespaceSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: metav1.LabelSelectorOpIn}}}
		}, "spec.namespaceSelector"},
		{"workload cert longer than renew window", func(m *meshv1alpha1.Mesh) {
			m.Spec.Identity.WorkloadCertLifetime.Duration = 26 * time.Hour
		}, "spec.identity.workloadCertLifetime: Invalid value: \"26h0m0s\": must not be longer than issuerRenewBefore"},
		{"skipping the proxy's own port", func(m *meshv1alpha1.Mesh) { m.Spec.Proxy.SkipInboundPorts = []int32{80, 4143} },
			"spec.proxy.skipInboundPorts[1]: Invalid value: 4143: is the proxy's own inbound port"},
		{"request above limit", func(m *meshv1alpha1.Mesh) {
			m.Spec.Proxy.Resources = &corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
			}
		}, "spec.proxy.resources.requests[memory]: Invalid value: \"1Gi\": must not exceed the limit 512Mi"},
		{"ratio not a number", func(m *meshv1alpha1.Mesh) { m.Spec.Traffic.RetryBudget.Ratio = "lots" }, "spec.traffic.retryBudget.ratio"},
		{"ratio above one", func(m *meshv1alpha1.Mesh) { m.Spec.Traffic.RetryBudget.Ratio = "1.01" }, "between 0 and 1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := validMesh()
			tc.mutate(m)
			errs := Mesh(m)
			switch {
			case tc.want == "" && len(errs) > 0:
				t.Fatalf("unexpected errors: %v", errs)
			case tc.want != "" && !strings.Contains(errs.ToAggregate().Error(), tc.want):
				t.Fatalf("errors %v do not contain %q", errs, tc.want)
			}
		})
	}
}

func TestRegularExpressionsCompile(t *testing.T) {
	p := &meshv1alpha1.MeshPolicy{Spec: meshv1alpha1.MeshPolicySpec{Routes: []meshv1alpha1.Route{{
		Name: "r",
		Matches: []meshv1alpha1.HTTPMatch{{
			Path:    &meshv1alpha1.PathMatch{Type: meshv1alpha1.PathMatchRegularExpression, Value: "/items/([0-9+"},
			Headers: []meshv1alpha1.HeaderMatch{{Name: "x", Type: meshv1alpha1.HeaderMatchRegularExpression, Value: "(?P<"}},
		}},
	}}}}
	got := MeshPolicy(p).ToAggregate().Error()
	for _, want := range []string{"spec.routes[0].matches[0].path.value", "spec.routes[0].matches[0].headers[0].value", "not a valid RE2"} {
		if !strings.Contains(got, want) {
			t.Errorf("%q lacks %q", got, want)
		}
	}
	s := &meshv1alpha1.TrafficSplit{Spec: meshv1alpha1.TrafficSplitSpec{Matches: []meshv1alpha1.HTTPMatch{{
		Path: &meshv1alpha1.PathMatch{Type: meshv1alpha1.PathMatchRegularExpression, Value: "/ok/.*"},
	}}}}
	if errs := TrafficSplit(s); len(errs) != 0 {
		t.Fatalf("valid expression refused: %v", errs)
	}
}
