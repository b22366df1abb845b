package proxyconfig

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Validate checks a defaulted document and returns every problem with its field path. Call SetDefaults first: fields
// that have defaults are treated as required here.
func Validate(c *Config) field.ErrorList {
	var errs field.ErrorList
	if c.APIVersion != APIVersion {
		errs = append(errs, field.NotSupported(field.NewPath("apiVersion"), c.APIVersion, []string{APIVersion}))
	}
	if c.Version == "" {
		errs = append(errs, field.Required(field.NewPath("version"), ""))
	}
	if c.Defaults != nil {
		errs = append(errs, validateDefaults(c.Defaults, field.NewPath("defaults"))...)
	}
	errs = append(errs, validateServices(c.Services, field.NewPath("services"))...)
	if c.Inbound != nil {
		errs = append(errs, validateInbound(c.Inbound, field.NewPath("inbound"))...)
	}
	seen := map[int32]bool{}
	for i, p := range c.OpaquePorts {
		fp := field.NewPath("opaquePorts").Index(i)
		errs = append(errs, validatePort(p, fp)...)
		if seen[p] {
			errs = append(errs, field.Duplicate(fp, p))
		}
		seen[p] = true
	}
	return errs
}

func validateDefaults(d *Defaults, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validateDuration(d.DetectTimeout, p.Child("detectTimeout"), true)...)
	errs = append(errs, validateDuration(d.ConnectTimeout, p.Child("connectTimeout"), true)...)
	errs = append(errs, validateDuration(d.RequestTimeout, p.Child("requestTimeout"), false)...)
	errs = append(errs, validateDuration(d.TCPIdleTimeout, p.Child("tcpIdleTimeout"), true)...)
	errs = append(errs, validateDuration(d.HTTPIdleTimeout, p.Child("httpIdleTimeout"), true)...)
	if d.DetectTimeout != nil && d.DetectTimeout.Duration > 30*time.Second {
		errs = append(errs, field.Invalid(p.Child("detectTimeout"), d.DetectTimeout.String(), "must be at most 30s"))
	}
	if b := d.RetryBudget; b != nil {
		bp := p.Child("retryBudget")
		if b.Ratio == nil || *b.Ratio < 0 || *b.Ratio > 1 {
			errs = append(errs, field.Invalid(bp.Child("ratio"), ptrString(b.Ratio), "must be between 0 and 1"))
		}
		if b.MinRetriesPerSecond == nil || *b.MinRetriesPerSecond < 0 {
			errs = append(errs, field.Invalid(bp.Child("minRetriesPerSecond"), ptrString(b.MinRetriesPerSecond),
				"must be 0 or more"))
		}
		errs = append(errs, validateDuration(b.TTL, bp.Child("ttl"), true)...)
	}
	if f := d.FailureAccrual; f != nil {
		errs = append(errs, validateFailureAccrual(f, p.Child("failureAccrual"))...)
	}
	errs = append(errs, validateLoadBalancer(d.LoadBalancer, p.Child("loadBalancer"))...)
	return errs
}

func validateFailureAccrual(f *FailureAccrual, fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	if f.ConsecutiveFailures == nil || *f.ConsecutiveFailures < 1 {
		errs = append(errs, field.Invalid(fp.Child("consecutiveFailures"), ptrString(f.ConsecutiveFailures),
			"must be 1 or more"))
	}
	errs = append(errs, validateDuration(f.MinBackoff, fp.Child("minBackoff"), true)...)
	errs = append(errs, validateDuration(f.MaxBackoff, fp.Child("maxBackoff"), true)...)
	if f.MinBackoff != nil && f.MaxBackoff != nil && f.MaxBackoff.Duration < f.MinBackoff.Duration {
		errs = append(errs, field.Invalid(fp.Child("maxBackoff"), f.MaxBackoff.String(), "must not be less than minBackoff"))
	}
	return errs
}

var loadBalancers = []string{LoadBalancerEWMA, LoadBalancerLeastRequest, LoadBalancerRoundRobin, LoadBalancerRandom}

func validateLoadBalancer(v string, p *field.Path) field.ErrorList {
	for _, lb := range loadBalancers {
		if v == lb {
			return nil
		}
	}
	return field.ErrorList{field.NotSupported(p, v, loadBalancers)}
}

// validateLimit checks an optional circuit-breaking limit against its minimum.
func validateLimit(v *int32, minimum int32, p *field.Path) field.ErrorList {
	if v != nil && *v < minimum {
		return field.ErrorList{field.Invalid(p, *v, fmt.Sprintf("must be %d or more", minimum))}
	}
	return nil
}

func validateServices(svcs []Service, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	keys := map[netip.AddrPort]int{}
	for i := range svcs {
		s := &svcs[i]
		sp := p.Index(i)
		errs = append(errs, validateName(s.Name, sp.Child("name"))...)
		errs = append(errs, validateName(s.Namespace, sp.Child("namespace"))...)
		errs = append(errs, validatePort(s.Port, sp.Child("port"))...)
		errs = append(errs, validateProtocol(s.Protocol, sp.Child("protocol"))...)
		if len(s.ClusterIPs) == 0 {
			errs = append(errs, field.Required(sp.Child("clusterIPs"), "at least one cluster IP"))
		}
		for j, ip := range s.ClusterIPs {
			a, err := netip.ParseAddr(ip)
			if err != nil || a.Zone() != "" {
				errs = append(errs, field.Invalid(sp.Child("clusterIPs").Index(j), ip, "must be an IPv4 or IPv6 address"))
				continue
			}
			if s.Port > 0 && s.Port <= 65535 {
				k := netip.AddrPortFrom(a.Unmap(), uint16(s.Port))
				if prev, dup := keys[k]; dup {
					errs = append(errs, field.Duplicate(sp.Child("clusterIPs").Index(j),
						fmt.Sprintf("%s (also services[%d])", k, prev)))
				}
				keys[k] = i
			}
		}
		errs = append(errs, validateBackends(s, sp)...)
		errs = append(errs, validateRoutes(s, sp.Child("routes"))...)
		if s.LoadBalancer != "" {
			errs = append(errs, validateLoadBalancer(s.LoadBalancer, sp.Child("loadBalancer"))...)
		}
		if s.FailureAccrual != nil {
			errs = append(errs, validateFailureAccrual(s.FailureAccrual, sp.Child("failureAccrual"))...)
		}
		errs = append(errs, validateLimit(s.MaxConnections, 1, sp.Child("maxConnections"))...)
		errs = append(errs, validateLimit(s.MaxRequests, 1, sp.Child("maxRequests"))...)
		errs = append(errs, validateLimit(s.MaxPendingRequests, 0, sp.Child("maxPendingRequests"))...)
	}
	return errs
}

func validateBackends(s *Service, sp *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(s.Backends) == 0 {
		errs = append(errs, field.Required(sp.Child("backends"), "at least one backend"))
	}
	names := map[string]bool{}
	for j := range s.Backends {
		b := &s.Backends[j]
		bp := sp.Child("backends").Index(j)
		errs = append(errs, uniqueName(names, b.Name, bp.Child("name"))...)
		errs = append(errs, validateWeight(b.Weight, bp.Child("weight"))...)
		for k := range b.Endpoints {
			errs = append(errs, validateEndpoint(&b.Endpoints[k], bp.Child("endpoints").Index(k))...)
		}
	}
	return errs
}

func validateEndpoint(e *Endpoint, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	ap, err := netip.ParseAddrPort(e.Address)
	if err != nil || ap.Port() == 0 || ap.Addr().Zone() != "" {
		errs = append(errs, field.Invalid(p.Child("address"), e.Address, "must be ip:port (IPv6 as [ip]:port)"))
	}
	if e.Identity != "" {
		errs = append(errs, validateSPIFFE(e.Identity, p.Child("identity"))...)
	}
	return errs
}

func validateRoutes(s *Service, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	backends := map[string]bool{}
	for _, b := range s.Backends {
		backends[b.Name] = true
	}
	names := map[string]bool{}
	for i := range s.Routes {
		r := &s.Routes[i]
		rp := p.Index(i)
		errs = append(errs, uniqueName(names, r.Name, rp.Child("name"))...)
		for j := range r.Matches {
			errs = append(errs, validateMatch(&r.Matches[j], rp.Child("matches").Index(j))...)
		}
		for j, ref := range r.Backends {
			bp := rp.Child("backends").Index(j)
			if !backends[ref.Name] {
				errs = append(errs, field.NotFound(bp.Child("name"), ref.Name))
			}
			errs = append(errs, validateWeight(ref.Weight, bp.Child("weight"))...)
		}
		errs = append(errs, validateDuration(r.Timeout, rp.Child("timeout"), false)...)
		if r.Retry != nil {
			errs = append(errs, validateRetry(r.Retry, rp.Child("retry"))...)
		}
		errs = append(errs, validateHeaderModifier(r.RequestHeaders, rp.Child("requestHeaders"))...)
		errs = append(errs, validateHeaderModifier(r.ResponseHeaders, rp.Child("responseHeaders"))...)
		errs = append(errs, validateDirectResponse(r, rp)...)
	}
	return errs
}

// validateDirectResponse checks a route the proxy answers itself: a status it can send, and nothing that only
// forwarded requests use.
func validateDirectResponse(r *Route, p *field.Path) field.ErrorList {
	d := r.DirectResponse
	if d == nil {
		return nil
	}
	var errs field.ErrorList
	dp := p.Child("directResponse")
	if d.Status < 200 || d.Status > 599 {
		errs = append(errs, field.Invalid(dp.Child("status"), d.Status, "must be an HTTP status from 200 to 599"))
	}
	if strings.ContainsAny(d.Reason, "\r\n") {
		errs = append(errs, field.Invalid(dp.Child("reason"), d.Reason, "must be one line (it is sent in a header)"))
	}
	for _, f := range []struct {
		name string
		set  bool
	}{{"backends", len(r.Backends) > 0}, {"retry", r.Retry != nil}, {"requestHeaders", r.RequestHeaders != nil},
		{"responseHeaders", r.ResponseHeaders != nil}} {
		if f.set {
			errs = append(errs, field.Forbidden(p.Child(f.name), "a route with a directResponse forwards nothing"))
		}
	}
	return errs
}

func validateHeaderModifier(m *HeaderModifier, p *field.Path) field.ErrorList {
	if m == nil {
		return nil
	}
	var errs field.ErrorList
	check := func(name string, fp *field.Path) {
		if !isToken(name) {
			errs = append(errs, field.Invalid(fp, name, "must be an HTTP header name"))
		}
	}
	for i, h := range m.Set {
		check(h.Name, p.Child("set").Index(i).Child("name"))
	}
	for i, h := range m.Add {
		check(h.Name, p.Child("add").Index(i).Child("name"))
	}
	for i, name := range m.Remove {
		check(name, p.Child("remove").Index(i))
	}
	return errs
}

func validateRetry(r *RetryPolicy, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if r.Attempts == nil || *r.Attempts < 0 || *r.Attempts > 10 {
		errs = append(errs, field.Invalid(p.Child("attempts"), ptrString(r.Attempts), "must be between 0 and 10"))
	}
	for i, on := range r.RetryOn {
		switch on {
		case "connect-failure", "refused-stream", "5xx", "gateway-error", "reset",
			"cancelled", "deadline-exceeded", "resource-exhausted", "internal", "unavailable":
			continue
		}
		if code, err := strconv.Atoi(on); err == nil && len(on) == 3 && code >= 100 && code <= 599 {
			continue
		}
		errs = append(errs, field.Invalid(p.Child("retryOn").Index(i), on,
			`must be "connect-failure", "refused-stream", "5xx", "gateway-error", "reset", a status code or a gRPC `+
				`status name ("cancelled", "deadline-exceeded", "resource-exhausted", "internal", "unavailable")`))
	}
	errs = append(errs, validateDuration(r.PerTryTimeout, p.Child("perTryTimeout"), false)...)
	if b := r.Backoff; b != nil {
		bp := p.Child("backoff")
		errs = append(errs, validateDuration(b.Base, bp.Child("base"), true)...)
		errs = append(errs, validateDuration(b.Max, bp.Child("max"), true)...)
		if b.Base != nil && b.Max != nil && b.Max.Duration < b.Base.Duration {
			errs = append(errs, field.Invalid(bp.Child("max"), b.Max.String(), "must not be less than base"))
		}
	}
	if r.MaxBodyBytes == nil || *r.MaxBodyBytes < 0 || *r.MaxBodyBytes > MaxRetryBodyBytes {
		errs = append(errs, field.Invalid(p.Child("maxBodyBytes"), ptrString(r.MaxBodyBytes),
			fmt.Sprintf("must be between 0 and %d", MaxRetryBodyBytes)))
	}
	return errs
}

func validateMatch(m *Match, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if m.Path != nil {
		pp := p.Child("path")
		switch m.Path.Type {
		case MatchExact, MatchPathPrefix:
			if !strings.HasPrefix(m.Path.Value, "/") {
				errs = append(errs, field.Invalid(pp.Child("value"), m.Path.Value, `must start with "/"`))
			}
		case MatchRegularExpression:
			errs = append(errs, validateRegexp(m.Path.Value, pp.Child("value"))...)
		default:
			errs = append(errs, field.NotSupported(pp.Child("type"), m.Path.Type,
				[]string{MatchExact, MatchPathPrefix, MatchRegularExpression}))
		}
	}
	if m.Method != "" && !isToken(m.Method) {
		errs = append(errs, field.Invalid(p.Child("method"), m.Method, "must be an HTTP method token"))
	}
	for i, h := range m.Headers {
		hp := p.Child("headers").Index(i)
		if !isToken(h.Name) {
			errs = append(errs, field.Invalid(hp.Child("name"), h.Name, "must be an HTTP header name"))
		}
		switch h.Type {
		case MatchExact:
		case MatchRegularExpression:
			errs = append(errs, validateRegexp(h.Value, hp.Child("value"))...)
		default:
			errs = append(errs, field.NotSupported(hp.Child("type"), h.Type, []string{MatchExact, MatchRegularExpression}))
		}
	}
	return errs
}

func validateInbound(in *Inbound, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	errs = append(errs, validatePolicy(in.DefaultPolicy, p.Child("defaultPolicy"))...)
	errs = append(errs, validateInboundPorts(in.Ports, p.Child("ports"))...)
	names := map[string]bool{}
	for i := range in.Workloads {
		w := &in.Workloads[i]
		wp := p.Child("workloads").Index(i)
		errs = append(errs, uniqueName(names, w.Name, wp.Child("name"))...)
		errs = append(errs, validateName(w.Namespace, wp.Child("namespace"))...)
		for j, r := range w.MatchExpressions {
			rp := wp.Child("matchExpressions").Index(j)
			if r.Key == "" {
				errs = append(errs, field.Required(rp.Child("key"), ""))
			}
			switch r.Operator {
			case "In", "NotIn":
				if len(r.Values) == 0 {
					errs = append(errs, field.Required(rp.Child("values"), "In and NotIn need values"))
				}
			case "Exists", "DoesNotExist":
				if len(r.Values) > 0 {
					errs = append(errs, field.Invalid(rp.Child("values"), r.Values, "Exists and DoesNotExist take no values"))
				}
			default:
				errs = append(errs, field.NotSupported(rp.Child("operator"), r.Operator, []string{"In", "NotIn", "Exists", "DoesNotExist"}))
			}
		}
		if len(w.Ports) == 0 && w.DefaultPolicy == "" && len(w.Authorizations) == 0 {
			errs = append(errs, field.Required(wp.Child("ports"), "an entry needs ports, a defaultPolicy or authorizations"))
		}
		errs = append(errs, validateInboundPorts(w.Ports, wp.Child("ports"))...)
		if w.DefaultPolicy != "" {
			errs = append(errs, validatePolicy(w.DefaultPolicy, wp.Child("defaultPolicy"))...)
		}
		errs = append(errs, validateAuthorizations(w.Authorizations, wp.Child("authorizations"))...)
		errs = append(errs, validateInboundRoutes(w.Routes, wp.Child("routes"))...)
	}
	return errs
}

func validateInboundPorts(list []InboundPort, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	ports := map[int32]bool{}
	for i := range list {
		ip := &list[i]
		pp := p.Index(i)
		errs = append(errs, validatePort(ip.Port, pp.Child("port"))...)
		if ports[ip.Port] {
			errs = append(errs, field.Duplicate(pp.Child("port"), ip.Port))
		}
		ports[ip.Port] = true
		errs = append(errs, validateProtocol(ip.Protocol, pp.Child("protocol"))...)
		errs = append(errs, validatePolicy(ip.DefaultPolicy, pp.Child("defaultPolicy"))...)
		errs = append(errs, validateAuthorizations(ip.Authorizations, pp.Child("authorizations"))...)
		errs = append(errs, validateInboundRoutes(ip.Routes, pp.Child("routes"))...)
	}
	return errs
}

func validateInboundRoutes(routes []InboundRoute, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	names := map[string]bool{}
	for j := range routes {
		r := &routes[j]
		rp := p.Index(j)
		errs = append(errs, uniqueName(names, r.Name, rp.Child("name"))...)
		for k := range r.Matches {
			errs = append(errs, validateMatch(&r.Matches[k], rp.Child("matches").Index(k))...)
		}
		errs = append(errs, validateAuthorizations(r.Authorizations, rp.Child("authorizations"))...)
	}
	return errs
}

func validateAuthorizations(as []Authorization, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i := range as {
		a := &as[i]
		ap := p.Index(i)
		if a.Name == "" {
			errs = append(errs, field.Required(ap.Child("name"), ""))
		}
		if len(a.Identities) == 0 && len(a.ServiceAccounts) == 0 && len(a.Namespaces) == 0 && !a.Unauthenticated {
			errs = append(errs, field.Required(ap, "one of identities, serviceAccounts, namespaces or unauthenticated"))
		}
		for j, id := range a.Identities {
			if id != "*" {
				errs = append(errs, validateSPIFFE(id, ap.Child("identities").Index(j))...)
			}
		}
		for j, sa := range a.ServiceAccounts {
			sp := ap.Child("serviceAccounts").Index(j)
			errs = append(errs, validateName(sa.Name, sp.Child("name"))...)
			errs = append(errs, validateName(sa.Namespace, sp.Child("namespace"))...)
		}
		for j, ns := range a.Namespaces {
			errs = append(errs, validateName(ns, ap.Child("namespaces").Index(j))...)
		}
		for j, n := range a.Networks {
			if _, err := netip.ParsePrefix(n); err != nil {
				errs = append(errs, field.Invalid(ap.Child("networks").Index(j), n, "must be a CIDR"))
			}
		}
	}
	return errs
}

func validatePolicy(v string, p *field.Path) field.ErrorList {
	switch v {
	case PolicyAllUnauthenticated, PolicyAllAuthenticated, PolicyClusterAuthenticated, PolicyDeny:
		return nil
	}
	return field.ErrorList{field.NotSupported(p, v, []string{PolicyAllUnauthenticated, PolicyAllAuthenticated,
		PolicyClusterAuthenticated, PolicyDeny})}
}

func validateProtocol(v string, p *field.Path) field.ErrorList {
	switch v {
	case ProtocolDetect, ProtocolHTTP1, ProtocolHTTP2, ProtocolOpaque:
		return nil
	}
	return field.ErrorList{field.NotSupported(p, v, []string{ProtocolDetect, ProtocolHTTP1, ProtocolHTTP2, ProtocolOpaque})}
}

func validatePort(v int32, p *field.Path) field.ErrorList {
	if v < 1 || v > 65535 {
		return field.ErrorList{field.Invalid(p, v, "must be between 1 and 65535")}
	}
	return nil
}

func validateWeight(w *int32, p *field.Path) field.ErrorList {
	if w == nil || *w < 0 || *w > 1000000 {
		return field.ErrorList{field.Invalid(p, ptrString(w), "must be between 0 and 1000000")}
	}
	return nil
}

func validateDuration(d *Duration, p *field.Path, required bool) field.ErrorList {
	switch {
	case d == nil && required:
		return field.ErrorList{field.Required(p, "")}
	case d != nil && d.Duration < 0:
		return field.ErrorList{field.Invalid(p, d.String(), "must not be negative")}
	case d != nil && required && d.Duration == 0:
		return field.ErrorList{field.Invalid(p, d.String(), "must be positive")}
	}
	return nil
}

// validateName accepts a DNS-1123 label, the form of namespaces, Services and ServiceAccounts.
func validateName(v string, p *field.Path) field.ErrorList {
	if v == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	if len(v) > 253 || !dns1123.MatchString(v) {
		return field.ErrorList{field.Invalid(p, v, "must be a lowercase RFC 1123 name")}
	}
	return nil
}

var dns1123 = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

// validateSPIFFE accepts spiffe://<trust domain>/<path> with a non-empty trust domain and path.
func validateSPIFFE(v string, p *field.Path) field.ErrorList {
	rest, ok := strings.CutPrefix(v, "spiffe://")
	td, path, _ := strings.Cut(rest, "/")
	if !ok || td == "" || path == "" || strings.ContainsAny(v, " ?#") {
		return field.ErrorList{field.Invalid(p, v, "must be a SPIFFE ID spiffe://<trust-domain>/<path>")}
	}
	return nil
}

func validateRegexp(v string, p *field.Path) field.ErrorList {
	if _, err := regexp.Compile(v); err != nil {
		return field.ErrorList{field.Invalid(p, v, "must be an RE2 regular expression: "+err.Error())}
	}
	return nil
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "<unset>"
	}
	return fmt.Sprint(*p)
}

// uniqueName checks a required name that must be unique among those seen (recorded in names).
func uniqueName(names map[string]bool, name string, p *field.Path) field.ErrorList {
	if name == "" {
		return field.ErrorList{field.Required(p, "")}
	}
	if names[name] {
		return field.ErrorList{field.Duplicate(p, name)}
	}
	names[name] = true
	return nil
}
