// Package validation checks the Trellis API objects for the mistakes the API server's schema and CEL rules cannot
// catch: label selectors, regular expressions, quantities and rules that span several fields. The same functions
// serve the reconciler (which reports failures as conditions) and any admission webhook, so users see one message
// for one mistake wherever it is caught.
package validation

import (
	"fmt"
	"regexp"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
)

// Mesh returns the problems of a Mesh's spec, with field paths.
func Mesh(m *meshv1alpha1.Mesh) field.ErrorList {
	spec := field.NewPath("spec")
	var errs field.ErrorList
	errs = append(errs, labelSelector(m.Spec.NamespaceSelector, spec.Child("namespaceSelector"))...)
	errs = append(errs, identity(&m.Spec.Identity, spec.Child("identity"))...)
	errs = append(errs, proxy(&m.Spec.Proxy, spec.Child("proxy"))...)
	errs = append(errs, retryRatio(m.Spec.Traffic.RetryBudget.Ratio, spec.Child("traffic", "retryBudget", "ratio"))...)
	return errs
}

// MeshPolicy returns the problems of a MeshPolicy's spec, with field paths.
func MeshPolicy(p *meshv1alpha1.MeshPolicy) field.ErrorList {
	spec := field.NewPath("spec")
	var errs field.ErrorList
	errs = append(errs, labelSelector(p.Spec.WorkloadSelector, spec.Child("workloadSelector"))...)
	for i := range p.Spec.Routes {
		route := spec.Child("routes").Index(i)
		for j := range p.Spec.Routes[i].Matches {
			errs = append(errs, httpMatch(&p.Spec.Routes[i].Matches[j], route.Child("matches").Index(j))...)
		}
	}
	if a := p.Spec.Authorization; a != nil {
		seen := map[string]bool{}
		for i, rule := range a.Rules {
			if seen[rule.Name] {
				errs = append(errs, field.Duplicate(spec.Child("authorization", "rules").Index(i).Child("name"), rule.Name))
			}
			seen[rule.Name] = true
		}
	}
	return errs
}

// TrafficSplit returns the problems of a TrafficSplit's spec, with field paths.
func TrafficSplit(s *meshv1alpha1.TrafficSplit) field.ErrorList {
	spec := field.NewPath("spec")
	var errs field.ErrorList
	for i := range s.Spec.Matches {
		errs = append(errs, httpMatch(&s.Spec.Matches[i], spec.Child("matches").Index(i))...)
	}
	return errs
}

func labelSelector(sel *metav1.LabelSelector, path *field.Path) field.ErrorList {
	if sel == nil {
		return nil
	}
	if _, err := metav1.LabelSelectorAsSelector(sel); err != nil {
		return field.ErrorList{field.Invalid(path, sel, err.Error())}
	}
	return nil
}

func identity(id *meshv1alpha1.IdentitySpec, path *field.Path) field.ErrorList {
	if id.WorkloadCertLifetime == nil || id.IssuerRenewBefore == nil {
		return nil
	}
	if id.WorkloadCertLifetime.Duration > id.IssuerRenewBefore.Duration {
		return field.ErrorList{field.Invalid(path.Child("workloadCertLifetime"), id.WorkloadCertLifetime.Duration.String(),
			fmt.Sprintf("must not be longer than issuerRenewBefore (%s), or a workload certificate issued just before the "+
				"issuer is renewed would outlive the issuer", id.IssuerRenewBefore.Duration))}
	}
	return nil
}

func proxy(p *meshv1alpha1.ProxySpec, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	own := map[int32]string{p.Ports.Inbound: "inbound", p.Ports.Outbound: "outbound", p.Ports.Admin: "admin"}
	for i, port := range p.SkipInboundPorts {
		if name, ok := own[port]; ok {
			errs = append(errs, field.Invalid(path.Child("skipInboundPorts").Index(i), port,
				fmt.Sprintf("is the proxy's own %s port; skipping it would bypass the proxy", name)))
		}
	}
	if r := p.Resources; r != nil {
		for name, limit := range r.Limits {
			if req, ok := r.Requests[name]; ok && req.Cmp(limit) > 0 {
				errs = append(errs, field.Invalid(path.Child("resources", "requests").Key(string(name)), req.String(),
					fmt.Sprintf("must not exceed the limit %s", limit.String())))
			}
		}
	}
	return errs
}

func retryRatio(ratio string, path *field.Path) field.ErrorList {
	if ratio == "" {
		return nil
	}
	v, err := strconv.ParseFloat(ratio, 64)
	if err != nil || v < 0 || v > 1 {
		return field.ErrorList{field.Invalid(path, ratio, "must be a decimal between 0 and 1, such as \"0.2\"")}
	}
	return nil
}

func httpMatch(m *meshv1alpha1.HTTPMatch, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if m.Path != nil && m.Path.Type == meshv1alpha1.PathMatchRegularExpression {
		if _, err := regexp.Compile(m.Path.Value); err != nil {
			errs = append(errs, field.Invalid(path.Child("path", "value"), m.Path.Value, "not a valid RE2 regular expression: "+err.Error()))
		}
	}
	for i, h := range m.Headers {
		if h.Type == meshv1alpha1.HeaderMatchRegularExpression {
			if _, err := regexp.Compile(h.Value); err != nil {
				errs = append(errs, field.Invalid(path.Child("headers").Index(i).Child("value"), h.Value, "not a valid RE2 regular expression: "+err.Error()))
			}
		}
	}
	return errs
}
