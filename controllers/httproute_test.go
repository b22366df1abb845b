package controllers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/render"
)

func serviceParent(name string, port int32) gatewayv1.ParentReference {
	return gatewayv1.ParentReference{Group: ptr.To(gatewayv1.Group("")), Kind: ptr.To(gatewayv1.Kind("Service")),
		Name: gatewayv1.ObjectName(name), Port: ptr.To(port)}
}

func backendRef(name string, port int32, weight int32) gatewayv1.HTTPBackendRef {
	return gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{Weight: ptr.To(weight), BackendObjectReference: gatewayv1.BackendObjectReference{
		Name: gatewayv1.ObjectName(name), Port: ptr.To(port)}}}
}

// routeCondition waits for the route's Trellis parent status condition.
func routeCondition(t *testing.T, c client.Client, r *gatewayv1.HTTPRoute, typ string, status metav1.ConditionStatus, reason, message string) {
	t.Helper()
	eventually(t, fmt.Sprintf("HTTPRoute %s %s=%s/%s", r.Name, typ, status, reason), func() error {
		if err := c.Get(testCtx(t), client.ObjectKeyFromObject(r), r); err != nil {
			return err
		}
		for _, ps := range r.Status.Parents {
			if ps.ControllerName != render.ControllerName {
				continue
			}
			cond := meta.FindStatusCondition(ps.Conditions, typ)
			if cond == nil || cond.Status != status || cond.Reason != reason || !strings.Contains(cond.Message, message) {
				return fmt.Errorf("got %+v", cond)
			}
			return nil
		}
		return fmt.Errorf("no parent status from %s: %+v", render.ControllerName, r.Status.Parents)
	})
}

func TestHTTPRoutesRenderedIntoTheProxyConfig(t *testing.T) {
	c := startManager(t)
	if !GatewayAPIServed(mustMapper(t)) {
		t.Fatal("the test API server should serve the Gateway API CRDs")
	}
	ns := "gamma"
	namespace(t, c, ns, map[string]string{"gamma": "yes"})
	create(t, c,
		service(ns, "web", httpPort(8080)),
		service(ns, "web-v1", httpPort(8080)),
		service(ns, "web-v2", httpPort(8080)),
		slice(ns, "web-v1", "http", 8080, map[string]string{"v1": "10.244.2.1"}),
		slice(ns, "web-v2", "http", 8080, map[string]string{"v2": "10.244.2.2"}),
	)
	mesh := createMesh(t, c, "gamma", map[string]string{"gamma": "yes"})
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)

	route := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}, Spec: gatewayv1.HTTPRouteSpec{
		CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{serviceParent("web", 8080)}},
		Rules: []gatewayv1.HTTPRouteRule{
			{
				Matches:     []gatewayv1.HTTPRouteMatch{{Headers: []gatewayv1.HTTPHeaderMatch{{Name: "x-canary", Value: "1"}}}},
				BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("web-v2", 8080, 1)},
				Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterRequestHeaderModifier,
					RequestHeaderModifier: &gatewayv1.HTTPHeaderFilter{Set: []gatewayv1.HTTPHeader{{Name: "x-route", Value: "canary"}}}}},
				Timeouts: &gatewayv1.HTTPRouteTimeouts{Request: ptr.To(gatewayv1.Duration("2s"))},
			},
			{BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("web-v1", 8080, 90), backendRef("web-v2", 8080, 10)}},
		},
	}}
	split := &meshv1alpha1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "old-split"}, Spec: meshv1alpha1.TrafficSplitSpec{
		Service: "web", Backends: []meshv1alpha1.TrafficSplitBackend{{Service: "web-v1", Weight: 1}},
	}}
	rewrite := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "rewrite"}, Spec: gatewayv1.HTTPRouteSpec{
		CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{serviceParent("web-v1", 8080)}},
		Rules: []gatewayv1.HTTPRouteRule{{Filters: []gatewayv1.HTTPRouteFilter{{Type: gatewayv1.HTTPRouteFilterURLRewrite,
			URLRewrite: &gatewayv1.HTTPURLRewriteFilter{Hostname: ptr.To(gatewayv1.PreciseHostname("x"))}}}}},
	}}
	missing := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "missing-backend"}, Spec: gatewayv1.HTTPRouteSpec{
		CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{serviceParent("web-v2", 8080)}},
		Rules:           []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{backendRef("web-v9", 8080, 1)}}},
	}}
	policy := &meshv1alpha1.MeshPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}, Spec: meshv1alpha1.MeshPolicySpec{
		TargetRef: &meshv1alpha1.PolicyTargetReference{Kind: "Service", Name: "web"},
		Timeouts:  &meshv1alpha1.Timeouts{Request: &metav1.Duration{Duration: 3 * time.Second}},
		Routes:    []meshv1alpha1.Route{{Name: "items", Matches: []meshv1alpha1.HTTPMatch{{Path: &meshv1alpha1.PathMatch{Type: "PathPrefix", Value: "/items"}}}}},
	}}
	create(t, c, route, split, rewrite, missing, policy)

	routeCondition(t, c, route, meshv1alpha1.ConditionAccepted, metav1.ConditionTrue, meshv1alpha1.ReasonAccepted, "")
	routeCondition(t, c, rewrite, meshv1alpha1.ConditionAccepted, metav1.ConditionFalse, render.ReasonUnsupportedValue, "filter URLRewrite")
	routeCondition(t, c, missing, meshv1alpha1.ConditionResolvedRefs, metav1.ConditionFalse, render.ReasonBackendNotFound, "web-v9 not found")
	eventually(t, "the split conflicts with the route", func() error {
		if err := c.Get(testCtx(t), client.ObjectKeyFromObject(split), split); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(split.Status.Conditions, meshv1alpha1.ConditionAccepted)
		if cond == nil || cond.Reason != meshv1alpha1.ReasonConflicted || !strings.Contains(cond.Message, "HTTPRoute gamma/web") {
			return fmt.Errorf("got %+v", cond)
		}
		return nil
	})
	eventually(t, "the policy's routes said not to apply", func() error {
		if err := c.Get(testCtx(t), client.ObjectKeyFromObject(policy), policy); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(policy.Status.Conditions, meshv1alpha1.ConditionAccepted)
		if cond == nil || cond.Status != metav1.ConditionTrue || !strings.Contains(cond.Message, "spec.routes do not apply: HTTPRoute gamma/web routes Service web") {
			return fmt.Errorf("got %+v", cond)
		}
		return nil
	})
	eventually(t, "the route's rules in the configuration", func() error {
		cfg, _, err := proxyConfigIn(t, c, ns)
		if err != nil {
			return err
		}
		web := findService(cfg, "web", 8080)
		// The HTTPRoute's two rules, then the 404 for requests neither matches; not the MeshPolicy's route.
		if web == nil || len(web.Routes) != 3 {
			return fmt.Errorf("web: %+v", web)
		}
		canary, rest, unmatched := web.Routes[0], web.Routes[1], web.Routes[2]
		if unmatched.Name != render.UnmatchedRouteName || unmatched.DirectResponse == nil || unmatched.DirectResponse.Status != 404 ||
			len(unmatched.Matches) != 0 || !strings.Contains(unmatched.DirectResponse.Reason, "Service gamma/web port 8080") {
			return fmt.Errorf("unmatched route: %+v", unmatched)
		}
		// The policy's timeout applies to the rule that sets none.
		if rest.Timeout == nil || rest.Timeout.Duration != 3*time.Second {
			return fmt.Errorf("default rule's timeout: %+v", rest.Timeout)
		}
		if canary.Name != "web-0" || canary.Timeout.Duration != 2*time.Second || canary.RequestHeaders == nil ||
			canary.RequestHeaders.Set[0].Value != "canary" || len(canary.Backends) != 1 || canary.Backends[0].Name != "web-v2:8080" {
			return fmt.Errorf("canary rule: %+v", canary)
		}
		// The API server defaults a rule without matches to the path prefix "/".
		if len(rest.Matches) != 1 || rest.Matches[0].Path.Value != "/" || len(rest.Backends) != 2 || *rest.Backends[0].Weight != 90 {
			return fmt.Errorf("default rule: %+v", rest)
		}
		v2 := findService(cfg, "web-v2", 8080)
		for _, b := range v2.Backends {
			if b.Name == "web-v9:8080" && strings.Contains(b.Unresolved, "web-v9 not found") {
				return nil
			}
		}
		return fmt.Errorf("the missing backend is not marked unresolved: %+v", v2.Backends)
	})
}

func mustMapper(t *testing.T) meta.RESTMapper {
	t.Helper()
	m, err := newMapper()
	if err != nil {
		t.Fatal(err)
	}
	return m
}
