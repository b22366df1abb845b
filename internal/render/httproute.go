package render

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
)

// ControllerName is the Gateway API controller name Trellis writes in the status of the HTTPRoutes it serves.
const ControllerName gatewayv1.GatewayController = "mesh.trellis.io/controller"

// Gateway API condition reasons Trellis uses on HTTPRoutes (the API's own names where it has one).
const (
	// ReasonNoMatchingParent: the parent Service does not exist.
	ReasonNoMatchingParent = "NoMatchingParent"
	// ReasonUnsupportedValue: the route uses a feature the mesh does not implement.
	ReasonUnsupportedValue = "UnsupportedValue"
	// ReasonBackendNotFound: a backend Service or port does not exist.
	ReasonBackendNotFound = "BackendNotFound"
	// ReasonInvalidKind: a backend is not a Service.
	ReasonInvalidKind = "InvalidKind"
	// ReasonRefNotPermitted: a backend in another namespace.
	ReasonRefNotPermitted = "RefNotPermitted"
)

// IsMeshRoute reports whether an HTTPRoute has a Service among its parents (a GAMMA route), and so is the mesh's.
func IsMeshRoute(r *gatewayv1.HTTPRoute) bool {
	for _, p := range r.Spec.ParentRefs {
		if isServiceParent(p) {
			return true
		}
	}
	return false
}

func isServiceParent(p gatewayv1.ParentReference) bool {
	return ptr.Deref(p.Group, gatewayv1.GroupName) == "" && ptr.Deref(p.Kind, "Gateway") == "Service"
}

// EvaluateHTTPRoutes decides which mesh HTTPRoutes are in force: in a meshed namespace, attached to Services of
// their own namespace that exist, using only what the proxy implements (path, header and method matches; request
// and response header modifiers; weighted Service backends; request timeouts). A route whose backend is missing is
// in force and that backend's share fails with 500.
func EvaluateHTTPRoutes(routes []gatewayv1.HTTPRoute, meshed map[string]bool, services []corev1.Service) map[types.NamespacedName]Verdict {
	idx := indexServices(services)
	out := map[types.NamespacedName]Verdict{}
	for i := range routes {
		r := &routes[i]
		key := types.NamespacedName{Namespace: r.Namespace, Name: r.Name}
		if !IsMeshRoute(r) {
			continue
		}
		if !meshed[r.Namespace] {
			out[key] = notMeshed("HTTPRoute", r.Namespace)
			continue
		}
		if msg := unsupported(r); msg != "" {
			out[key] = refused(ReasonUnsupportedValue, msg)
			continue
		}
		v := accepted()
		for _, p := range r.Spec.ParentRefs {
			if !isServiceParent(p) {
				continue
			}
			if ns := ptr.Deref(p.Namespace, gatewayv1.Namespace(r.Namespace)); string(ns) != r.Namespace {
				v = refused(ReasonUnsupportedValue, fmt.Sprintf("parent Service %s/%s is in another namespace: only routes in the Service's own namespace are supported", ns, p.Name))
				break
			}
			svc := types.NamespacedName{Namespace: r.Namespace, Name: string(p.Name)}
			if idx[svc] == nil {
				v = refused(ReasonNoMatchingParent, fmt.Sprintf("parent Service %s not found in namespace %s: create it or fix spec.parentRefs", p.Name, r.Namespace))
				break
			}
			if p.Port != nil && !idx.hasPort(svc, *p.Port) {
				v = refused(ReasonNoMatchingParent, fmt.Sprintf("parent Service %s has no port %d (it has %s)", p.Name, *p.Port, portList(idx[svc])))
				break
			}
		}
		if v.Accepted {
			if reason, msg := routeBackendProblems(r, idx); reason != "" {
				v.ResolvedRefs, v.RefsReason, v.RefsMessage = false, reason, msg+": requests sent to that share fail with 500 until it is fixed"
			}
		}
		out[key] = v
	}
	return out
}

// unsupported names the features of r the proxy does not implement, or "".
func unsupported(r *gatewayv1.HTTPRoute) string {
	var what []string
	for i, rule := range r.Spec.Rules {
		for _, m := range rule.Matches {
			if len(m.QueryParams) > 0 {
				what = append(what, fmt.Sprintf("rules[%d]: query parameter matches", i))
			}
		}
		for _, f := range rule.Filters {
			if f.Type != gatewayv1.HTTPRouteFilterRequestHeaderModifier && f.Type != gatewayv1.HTTPRouteFilterResponseHeaderModifier {
				what = append(what, fmt.Sprintf("rules[%d]: filter %s", i, f.Type))
			}
		}
		for _, b := range rule.BackendRefs {
			if len(b.Filters) > 0 {
				what = append(what, fmt.Sprintf("rules[%d]: backendRefs filters", i))
			}
		}
		if rule.Retry != nil {
			what = append(what, fmt.Sprintf("rules[%d]: retry (use a MeshPolicy's retries)", i))
		}
		if rule.SessionPersistence != nil {
			what = append(what, fmt.Sprintf("rules[%d]: sessionPersistence", i))
		}
		if rule.Timeouts != nil && rule.Timeouts.BackendRequest != nil {
			what = append(what, fmt.Sprintf("rules[%d]: timeouts.backendRequest (use a MeshPolicy's retries.perTryTimeout)", i))
		}
	}
	if len(what) == 0 {
		return ""
	}
	return "The mesh does not implement " + strings.Join(what, "; ") + ": remove them; the route is not in force until then"
}

// routeBackendProblems checks that every backend is a Service of the route's namespace with the port named.
func routeBackendProblems(r *gatewayv1.HTTPRoute, idx servicePorts) (reason, message string) {
	for i, rule := range r.Spec.Rules {
		for _, b := range rule.BackendRefs {
			ref := b.BackendObjectReference
			switch {
			case ptr.Deref(ref.Group, "") != "" || ptr.Deref(ref.Kind, "Service") != "Service":
				return ReasonInvalidKind, fmt.Sprintf("rules[%d]: backend %s is a %s, not a Service", i, ref.Name, ptr.Deref(ref.Kind, ""))
			case ref.Namespace != nil && string(*ref.Namespace) != r.Namespace:
				return ReasonRefNotPermitted, fmt.Sprintf("rules[%d]: backend %s/%s is in another namespace", i, *ref.Namespace, ref.Name)
			}
			svc := types.NamespacedName{Namespace: r.Namespace, Name: string(ref.Name)}
			if idx[svc] == nil {
				return ReasonBackendNotFound, fmt.Sprintf("rules[%d]: backend Service %s not found", i, ref.Name)
			}
			if ref.Port != nil && !idx.hasPort(svc, *ref.Port) {
				return ReasonBackendNotFound, fmt.Sprintf("rules[%d]: backend Service %s has no port %d", i, ref.Name, *ref.Port)
			}
		}
	}
	return "", ""
}

// routesFromHTTPRoutes renders the rules of the HTTPRoutes attached to Service svc on port, oldest route first and
// rules in order, and adds the backends they name to backends (with weight 0 at the Service level). Rules without
// a timeout take the policy's.
func routesFromHTTPRoutes(idx *endpointIndex, svc *corev1.Service, port corev1.ServicePort, attached []*gatewayv1.HTTPRoute,
	backends []proxyconfig.Backend, trustDomain string, policyTimeout *proxyconfig.Duration, policyRetry *proxyconfig.RetryPolicy,
) ([]proxyconfig.Route, []proxyconfig.Backend) {
	have := map[string]bool{}
	for _, b := range backends {
		have[b.Name] = true
	}
	var routes []proxyconfig.Route
	for _, r := range attached {
		for i, rule := range r.Spec.Rules {
			name := fmt.Sprintf("%s-%d", r.Name, i)
			if rule.Name != nil {
				name = r.Name + "-" + string(*rule.Name)
			}
			pr := proxyconfig.Route{Name: name, Matches: gatewayMatches(rule.Matches), Timeout: policyTimeout, Retry: policyRetry}
			if rule.Timeouts != nil && rule.Timeouts.Request != nil {
				pr.Timeout = gatewayDuration(*rule.Timeouts.Request)
			}
			for _, f := range rule.Filters {
				switch {
				case f.RequestHeaderModifier != nil:
					pr.RequestHeaders = headerModifier(f.RequestHeaderModifier)
				case f.ResponseHeaderModifier != nil:
					pr.ResponseHeaders = headerModifier(f.ResponseHeaderModifier)
				}
			}
			for _, b := range rule.BackendRefs {
				target := port.Port
				if b.Port != nil {
					target = *b.Port
				}
				bname := fmt.Sprintf("%s:%d", b.Name, target)
				if !have[bname] {
					have[bname] = true
					leg := proxyconfig.Backend{Name: bname, Namespace: svc.Namespace, Weight: ptr.To(int32(0)),
						Endpoints: idx.endpoints(svc.Namespace, string(b.Name), target, trustDomain)}
					if idx.svcs[types.NamespacedName{Namespace: svc.Namespace, Name: string(b.Name)}] == nil {
						leg.Unresolved = fmt.Sprintf("HTTPRoute %s/%s: backend Service %s not found", r.Namespace, r.Name, b.Name)
					}
					backends = append(backends, leg)
				}
				pr.Backends = append(pr.Backends, proxyconfig.BackendRef{Name: bname, Weight: ptr.To(ptr.Deref(b.Weight, 1))})
			}
			routes = append(routes, pr)
		}
	}
	return routes, backends
}

// UnmatchedRouteName names the last route of a Service port that HTTPRoutes route: the proxy answers the requests
// that no rule matches with 404 on it (the "route" metric label).
const UnmatchedRouteName = "unmatched"

// unmatchedRoute is the catch-all after the HTTPRoute rules of a Service port.
func unmatchedRoute(svc *corev1.Service, port int32) proxyconfig.Route {
	return proxyconfig.Route{Name: UnmatchedRouteName, DirectResponse: &proxyconfig.DirectResponse{Status: 404,
		Reason: fmt.Sprintf("no HTTPRoute rule of Service %s/%s port %d matches the request", svc.Namespace, svc.Name, port)}}
}

// attachedRoutes returns the HTTPRoutes attached to Service svc on port, oldest first.
func attachedRoutes(routes []gatewayv1.HTTPRoute, svc *corev1.Service, port int32) []*gatewayv1.HTTPRoute {
	var out []*gatewayv1.HTTPRoute
	for i := range routes {
		r := &routes[i]
		if r.Namespace != svc.Namespace {
			continue
		}
		for _, p := range r.Spec.ParentRefs {
			if isServiceParent(p) && string(p.Name) == svc.Name && (p.Port == nil || *p.Port == port) {
				out = append(out, r)
				break
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return olderObject(out[i], out[j]) })
	return out
}

func gatewayMatches(in []gatewayv1.HTTPRouteMatch) []proxyconfig.Match {
	out := make([]proxyconfig.Match, 0, len(in))
	for _, m := range in {
		pm := proxyconfig.Match{}
		if m.Method != nil {
			pm.Method = string(*m.Method)
		}
		if m.Path != nil && m.Path.Value != nil {
			pm.Path = &proxyconfig.PathMatch{Type: string(ptr.Deref(m.Path.Type, gatewayv1.PathMatchPathPrefix)), Value: *m.Path.Value}
		}
		for _, h := range m.Headers {
			pm.Headers = append(pm.Headers, proxyconfig.HeaderMatch{Name: string(h.Name), Type: string(ptr.Deref(h.Type, gatewayv1.HeaderMatchExact)), Value: h.Value})
		}
		out = append(out, pm)
	}
	return out
}

func headerModifier(f *gatewayv1.HTTPHeaderFilter) *proxyconfig.HeaderModifier {
	m := &proxyconfig.HeaderModifier{Remove: append([]string(nil), f.Remove...)}
	for _, h := range f.Set {
		m.Set = append(m.Set, proxyconfig.HeaderValue{Name: string(h.Name), Value: h.Value})
	}
	for _, h := range f.Add {
		m.Add = append(m.Add, proxyconfig.HeaderValue{Name: string(h.Name), Value: h.Value})
	}
	return m
}

// gatewayDuration converts a Gateway API duration ("1h2m3s4ms" style, a subset of Go's) to the proxy's; "0s" means
// no timeout.
func gatewayDuration(d gatewayv1.Duration) *proxyconfig.Duration {
	parsed, err := time.ParseDuration(string(d))
	if err != nil || parsed == 0 {
		return nil
	}
	return proxyconfig.D(parsed)
}

// RoutedServices returns, for every Service an HTTPRoute in force attaches to, the route's namespace/name; a
// TrafficSplit of such a Service conflicts with it.
func RoutedServices(routes []gatewayv1.HTTPRoute) map[types.NamespacedName]string {
	out := map[types.NamespacedName]string{}
	for i := range routes {
		r := &routes[i]
		for _, p := range r.Spec.ParentRefs {
			if isServiceParent(p) {
				key := types.NamespacedName{Namespace: r.Namespace, Name: string(p.Name)}
				if _, ok := out[key]; !ok {
					out[key] = r.Namespace + "/" + r.Name
				}
			}
		}
	}
	return out
}
