package render

import (
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/proxyconfig"
)

// inboundWorkloads renders the authorization of every MeshPolicy in force into per-workload inbound settings.
// A policy on a Service applies to the pods its selector picks, on the target ports of the policy's Service ports;
// a policy with a workload selector applies to the pods it picks, on the container ports it lists (or every port).
// Policies without authorization render nothing.
func inboundWorkloads(s *ProxySnapshot, idx *endpointIndex) []proxyconfig.InboundWorkload {
	var out []proxyconfig.InboundWorkload
	for i := range s.Policies {
		p := &s.Policies[i]
		a := p.Spec.Authorization
		if a == nil {
			continue
		}
		w := proxyconfig.InboundWorkload{Name: p.Namespace + "/" + p.Name, Namespace: p.Namespace}
		switch {
		case p.Spec.TargetRef != nil:
			svc := idx.svcs[types.NamespacedName{Namespace: p.Namespace, Name: p.Spec.TargetRef.Name}]
			if svc == nil || len(svc.Spec.Selector) == 0 {
				continue // nothing selects the pods; the verdict already says the target does not resolve
			}
			w.MatchLabels = copyLabels(svc.Spec.Selector)
			for _, sp := range svc.Spec.Ports {
				if len(p.Spec.Ports) > 0 && !containsPort(p.Spec.Ports, sp.Port) {
					continue
				}
				target := idx.targetPort(svc, sp)
				if target == 0 {
					continue
				}
				w.Ports = append(w.Ports, inboundPort(target, a, func(port int32) bool { return port == sp.Port }))
			}
			if len(w.Ports) == 0 {
				continue
			}
		case p.Spec.WorkloadSelector != nil:
			w.MatchLabels = copyLabels(p.Spec.WorkloadSelector.MatchLabels)
			for _, e := range p.Spec.WorkloadSelector.MatchExpressions {
				w.MatchExpressions = append(w.MatchExpressions, proxyconfig.LabelRequirement{
					Key: e.Key, Operator: string(e.Operator), Values: append([]string(nil), e.Values...),
				})
			}
			if len(p.Spec.Ports) == 0 {
				all := inboundPort(0, a, func(int32) bool { return true })
				w.DefaultPolicy, w.Authorizations, w.Routes = all.DefaultPolicy, all.Authorizations, all.Routes
			}
			for _, port := range p.Spec.Ports {
				w.Ports = append(w.Ports, inboundPort(port, a, func(q int32) bool { return q == port }))
			}
		default:
			continue
		}
		sort.Slice(w.Ports, func(i, j int) bool { return w.Ports[i].Port < w.Ports[j].Port })
		out = append(out, w)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// inboundPort renders a policy's authorization for one port. covers says whether a rule's to.ports entry names
// this port (in the policy's port space: Service ports for a Service, container ports otherwise). Rules without an
// HTTP condition become port authorizations; rules with paths or methods become routes.
func inboundPort(port int32, a *meshv1alpha1.Authorization, covers func(int32) bool) proxyconfig.InboundPort {
	ip := proxyconfig.InboundPort{Port: port, DefaultPolicy: defaultAction(a)}
	for _, rule := range a.Rules {
		auth := authorization(rule)
		if len(rule.To) == 0 {
			ip.Authorizations = append(ip.Authorizations, auth)
			continue
		}
		for i, to := range rule.To {
			if len(to.Ports) > 0 && !anyPort(to.Ports, covers) {
				continue
			}
			if len(to.Paths) == 0 && len(to.Methods) == 0 {
				ip.Authorizations = append(ip.Authorizations, auth)
				continue
			}
			route := proxyconfig.InboundRoute{Name: fmt.Sprintf("%s-%d", rule.Name, i), Authorizations: []proxyconfig.Authorization{auth}}
			route.Matches = httpConditions(to)
			ip.Routes = append(ip.Routes, route)
		}
	}
	return ip
}

// defaultAction maps a policy's default action: Deny when it says so or when it has rules and says nothing, Allow
// when it says so; "" (the Mesh's default policy) otherwise.
func defaultAction(a *meshv1alpha1.Authorization) string {
	switch {
	case a.DefaultAction == meshv1alpha1.AuthorizationDeny, a.DefaultAction == "" && len(a.Rules) > 0:
		return proxyconfig.PolicyDeny
	case a.DefaultAction == meshv1alpha1.AuthorizationAllow:
		return proxyconfig.PolicyAllUnauthenticated
	}
	return ""
}

func authorization(rule meshv1alpha1.AuthorizationRule) proxyconfig.Authorization {
	auth := proxyconfig.Authorization{Name: rule.Name}
	for _, from := range rule.From {
		switch {
		case from.Identity != "":
			auth.Identities = append(auth.Identities, from.Identity)
		case from.ServiceAccount != nil:
			auth.ServiceAccounts = append(auth.ServiceAccounts, proxyconfig.ServiceAccountRef{
				Name: from.ServiceAccount.Name, Namespace: from.ServiceAccount.Namespace,
			})
		case from.Namespace != "":
			auth.Namespaces = append(auth.Namespaces, from.Namespace)
		case from.Unauthenticated:
			auth.Unauthenticated = true
		}
	}
	return auth
}

// httpConditions turns a rule's paths (as prefixes) and methods into matches: every path with every method.
func httpConditions(to meshv1alpha1.AuthorizationTarget) []proxyconfig.Match {
	paths := to.Paths
	if len(paths) == 0 {
		paths = []string{""}
	}
	methods := to.Methods
	if len(methods) == 0 {
		methods = []meshv1alpha1.HTTPMethod{""}
	}
	var out []proxyconfig.Match
	for _, path := range paths {
		for _, method := range methods {
			m := proxyconfig.Match{Method: string(method)}
			if path != "" {
				m.Path = &proxyconfig.PathMatch{Type: proxyconfig.MatchPathPrefix, Value: path}
			}
			out = append(out, m)
		}
	}
	return out
}

func anyPort(ports []int32, covers func(int32) bool) bool {
	for _, p := range ports {
		if covers(p) {
			return true
		}
	}
	return false
}

func copyLabels(in map[string]string) map[string]string {
	if len(in) == 0 {
		return nil
	}
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// targetPort resolves a Service port's target port: a number as is, a name through the Service's EndpointSlices
// (whose ports carry the resolved number under the Service port's name). It returns 0 when it cannot.
func (idx *endpointIndex) targetPort(svc *corev1.Service, sp corev1.ServicePort) int32 {
	switch {
	case sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal != 0:
		return sp.TargetPort.IntVal
	case sp.TargetPort.Type == intstr.Int:
		return sp.Port
	}
	for _, es := range idx.slices[types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}] {
		for _, p := range es.Ports {
			if ptr.Deref(p.Name, "") == sp.Name && p.Port != nil && ptr.Deref(p.Protocol, corev1.ProtocolTCP) == corev1.ProtocolTCP {
				return *p.Port
			}
		}
	}
	return 0
}
