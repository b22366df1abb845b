package authz

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
)

// Matcher reports whether an HTTP request meets an inbound route's matches.
type Matcher interface {
	Matches(HTTPRequest) bool
}

// CompileOptions are what Compile needs to know of the pod.
type CompileOptions struct {
	// Namespace is the pod's namespace: only workload entries of this namespace apply. Default "": no workload
	// entry applies.
	Namespace string
	// Labels are the pod's labels, matched against the workload entries' selectors. Default nil: no labels.
	Labels map[string]string
	// TrustDomain turns serviceAccounts and namespaces into SPIFFE IDs. Default "cluster.local".
	TrustDomain string
	// Matches compiles an inbound route's matches (an empty list matches every request). Required when a route
	// applies to the pod.
	Matches func([]proxyconfig.Match) (Matcher, error)
}

// Table is one pod's compiled inbound authorization: the Policy of every port, and of the ports nothing lists.
// It is immutable.
type Table struct {
	ports map[uint16]*Port
	other *Policy
}

// Port is a port that inbound.ports or a workload entry applying to the pod lists.
type Port struct {
	// Port is the container port.
	Port uint16
	// Name and Protocol are the port's name and protocol hint: the first set by the applying workload entries that
	// list the port, else by inbound.ports.
	Name, Protocol string
	// Policy decides the port's clients.
	Policy *Policy
}

// Policy is the compiled authorization of a port: its authorizations, its routes and its default policy.
type Policy struct {
	// Source names where the settings come from: a workload entry ("shop/web"), "port-<n>" for inbound.ports, or
	// "inbound" for inbound.defaultPolicy.
	Source string
	// DefaultPolicy decides the clients no authorization allows.
	DefaultPolicy string

	kind           policyKind
	rule           string // "default:<policy>"
	reasons        [reasonCount]string
	authorizations []authorization
	routes         []route
}

type policyKind uint8

const (
	kindAllUnauthenticated policyKind = iota
	kindAllAuthenticated
	kindClusterAuthenticated
	kindDeny
)

func kindOf(policy string) policyKind {
	switch policy {
	case proxyconfig.PolicyAllAuthenticated:
		return kindAllAuthenticated
	case proxyconfig.PolicyClusterAuthenticated:
		return kindClusterAuthenticated
	case proxyconfig.PolicyDeny:
		return kindDeny
	}
	return kindAllUnauthenticated
}

const (
	reasonUnauthenticated = iota
	reasonForeignDomain
	reasonOutsideNetworks
	reasonDenied
	reasonCount
)

type route struct {
	name           string
	matcher        Matcher
	authorizations []authorization
}

// authorization is a compiled proxyconfig.Authorization.
type authorization struct {
	rule            string
	networks        []netip.Prefix // empty: any address
	unauthenticated bool           // no identity required
	anyIdentity     bool           // "*": any authenticated client
	exact           []string       // SPIFFE IDs, sorted; searched when short
	exactSet        map[string]struct{}
	prefixes        []string // "…/*" identities and "spiffe://<td>/ns/<ns>/sa/" for namespaces
}

// exactSetMin is the number of exact identities from which a map beats a linear scan.
const exactSetMin = 8

func (a *authorization) allows(client netip.Addr, identity string) bool {
	if len(a.networks) > 0 && !inNetworks(a.networks, client) {
		return false
	}
	if a.unauthenticated {
		return true
	}
	if identity == "" {
		return false
	}
	if a.anyIdentity {
		return true
	}
	if a.exactSet != nil {
		if _, ok := a.exactSet[identity]; ok {
			return true
		}
	} else {
		for _, id := range a.exact {
			if id == identity {
				return true
			}
		}
	}
	for _, p := range a.prefixes {
		if strings.HasPrefix(identity, p) {
			return true
		}
	}
	return false
}

// firstRoute returns the name of the first route whose matches r meets, or "".
func (p *Policy) firstRoute(r HTTPRequest) string {
	for i := range p.routes {
		if p.routes[i].matcher.Matches(r) {
			return p.routes[i].name
		}
	}
	return ""
}

// HasRules reports whether the policy has authorizations or routes, beyond its default policy.
func (p *Policy) HasRules() bool { return len(p.authorizations) > 0 || len(p.routes) > 0 }

var basePolicies = func() map[string]*Policy {
	m := map[string]*Policy{}
	for _, name := range []string{proxyconfig.PolicyAllUnauthenticated, proxyconfig.PolicyAllAuthenticated,
		proxyconfig.PolicyClusterAuthenticated, proxyconfig.PolicyDeny} {
		m[name] = newPolicy("inbound", name)
	}
	return m
}()

// basePolicy returns the precompiled policy of a default policy without rules.
func basePolicy(name string) *Policy {
	if p := basePolicies[name]; p != nil {
		return p
	}
	return basePolicies[proxyconfig.PolicyAllUnauthenticated]
}

func newPolicy(source, defaultPolicy string) *Policy {
	if defaultPolicy == "" {
		defaultPolicy = proxyconfig.PolicyAllUnauthenticated
	}
	p := &Policy{Source: source, DefaultPolicy: defaultPolicy, kind: kindOf(defaultPolicy),
		rule: ruleDefault + defaultPolicy}
	p.setReasons()
	return p
}

func (p *Policy) setReasons() {
	denied := ReasonDenied
	if p.HasRules() {
		denied = fmt.Sprintf(ReasonNotAuthorized, p.Source)
	}
	for i, text := range [reasonCount]string{ReasonUnauthenticated, ReasonForeignDomain, ReasonOutsideNetworks, denied} {
		p.reasons[i] = p.rule + ": " + text
	}
}

// Policy returns the settings of a port.
func (t *Table) Policy(port uint16) *Policy {
	if p := t.ports[port]; p != nil {
		return p.Policy
	}
	return t.other
}

// Port returns a port that inbound.ports or an applying workload entry lists, or nil.
func (t *Table) Port(port uint16) *Port { return t.ports[port] }

// Ports returns the listed ports, sorted.
func (t *Table) Ports() []*Port {
	out := make([]*Port, 0, len(t.ports))
	for _, p := range t.ports {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *Port) int { return int(a.Port) - int(b.Port) })
	return out
}

// Other returns the settings of the ports nothing lists.
func (t *Table) Other() *Policy { return t.other }

// Compile resolves a (defaulted, validated) inbound section for one pod. For each port, in this order:
//  1. the first workload entry (in document order) of the pod's namespace whose selector matches the pod's labels
//     and that covers the port: its settings for the port when it lists it, else its settings of other ports;
//  2. else the port's entry in inbound.ports;
//  3. else inbound.defaultPolicy.
//
// An entry covers the ports it lists and, when it has settings of other ports (it lists no port, or sets
// authorizations, routes or a defaultPolicy other than inbound.defaultPolicy), every other port.
func Compile(in *proxyconfig.Inbound, o CompileOptions) (*Table, error) {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if in == nil {
		in = &proxyconfig.Inbound{}
	}
	c := compiler{o: o, base: basePolicy(in.DefaultPolicy)}
	var applying []*proxyconfig.InboundWorkload
	for i := range in.Workloads {
		if w := &in.Workloads[i]; w.Namespace == o.Namespace && o.Namespace != "" && Selects(w, o.Labels) {
			applying = append(applying, w)
		}
	}
	t := &Table{ports: map[uint16]*Port{}, other: c.base}
	others := make([]*Policy, len(applying)) // each applying entry's other-port settings, compiled once
	for i, w := range applying {
		if !coversOthers(w, in.DefaultPolicy) {
			continue
		}
		p, err := c.policy(w.Name, w.DefaultPolicy, w.Authorizations, w.Routes, w.Name)
		if err != nil {
			return nil, fmt.Errorf("inbound.workloads %q: %w", w.Name, err)
		}
		others[i] = p
		if t.other == c.base {
			t.other = p
		}
	}
	listed := map[uint16]bool{}
	for _, ip := range in.Ports {
		listed[uint16(ip.Port)] = true
	}
	for _, w := range applying {
		for _, ip := range w.Ports {
			listed[uint16(ip.Port)] = true
		}
	}
	for port := range listed {
		p, err := c.resolve(port, in, applying, others)
		if err != nil {
			return nil, err
		}
		t.ports[port] = p
	}
	return t, nil
}

type compiler struct {
	o    CompileOptions
	base *Policy
}

// resolve compiles the settings of a listed port.
func (c *compiler) resolve(port uint16, in *proxyconfig.Inbound, applying []*proxyconfig.InboundWorkload,
	others []*Policy) (*Port, error) {
	out := &Port{Port: port}
	describe := func(ip *proxyconfig.InboundPort) {
		out.Name, out.Protocol = cmp.Or(out.Name, ip.Name), cmp.Or(out.Protocol, ip.Protocol)
	}
	var policy *Policy
	for i, w := range applying {
		if ip := findPort(w.Ports, port); ip != nil {
			describe(ip)
			if policy == nil {
				p, err := c.policy(w.Name, ip.DefaultPolicy, ip.Authorizations, ip.Routes, w.Name)
				if err != nil {
					return nil, fmt.Errorf("inbound.workloads %q port %d: %w", w.Name, port, err)
				}
				policy = p
			}
		} else if policy == nil && others[i] != nil {
			policy = others[i]
		}
	}
	if ip := findPort(in.Ports, port); ip != nil {
		describe(ip)
		if policy == nil {
			source := "port-" + strconv.Itoa(int(port))
			p, err := c.policy(source, ip.DefaultPolicy, ip.Authorizations, ip.Routes, source)
			if err != nil {
				return nil, fmt.Errorf("inbound.ports %d: %w", port, err)
			}
			policy = p
		}
	}
	if policy == nil {
		policy = c.base
	}
	out.Policy = policy
	return out, nil
}

func findPort(ports []proxyconfig.InboundPort, port uint16) *proxyconfig.InboundPort {
	for i := range ports {
		if uint16(ports[i].Port) == port {
			return &ports[i]
		}
	}
	return nil
}

// coversOthers reports whether a workload entry has settings of the ports it does not list.
func coversOthers(w *proxyconfig.InboundWorkload, inboundDefault string) bool {
	return len(w.Ports) == 0 || len(w.Authorizations) > 0 || len(w.Routes) > 0 ||
		(w.DefaultPolicy != "" && w.DefaultPolicy != inboundDefault)
}

// policy compiles settings; rules are named "<prefix>/<authorization name>".
func (c *compiler) policy(source, defaultPolicy string, auths []proxyconfig.Authorization,
	routes []proxyconfig.InboundRoute, prefix string) (*Policy, error) {
	if defaultPolicy == "" {
		defaultPolicy = c.base.DefaultPolicy
	}
	p := newPolicy(source, defaultPolicy)
	for i := range auths {
		a, err := c.authorization(&auths[i], prefix)
		if err != nil {
			return nil, err
		}
		p.authorizations = append(p.authorizations, a)
	}
	for i := range routes {
		r := &routes[i]
		if c.o.Matches == nil {
			return nil, fmt.Errorf("route %q: no match compiler", r.Name)
		}
		m, err := c.o.Matches(r.Matches)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", r.Name, err)
		}
		rt := route{name: r.Name, matcher: m}
		for j := range r.Authorizations {
			a, err := c.authorization(&r.Authorizations[j], prefix)
			if err != nil {
				return nil, err
			}
			rt.authorizations = append(rt.authorizations, a)
		}
		p.routes = append(p.routes, rt)
	}
	p.setReasons()
	return p, nil
}

func (c *compiler) authorization(in *proxyconfig.Authorization, prefix string) (authorization, error) {
	a := authorization{rule: prefix + "/" + in.Name, unauthenticated: in.Unauthenticated}
	for _, n := range in.Networks {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return a, fmt.Errorf("authorization %q: network %q: %w", in.Name, n, err)
		}
		a.networks = append(a.networks, p.Masked())
	}
	domain := "spiffe://" + c.o.TrustDomain + "/ns/"
	for _, id := range in.Identities {
		switch {
		case id == "*":
			a.anyIdentity = true
		case strings.HasSuffix(id, "*"):
			a.prefixes = append(a.prefixes, strings.TrimSuffix(id, "*"))
		default:
			a.exact = append(a.exact, id)
		}
	}
	for _, sa := range in.ServiceAccounts {
		a.exact = append(a.exact, domain+sa.Namespace+"/sa/"+sa.Name)
	}
	for _, ns := range in.Namespaces {
		a.prefixes = append(a.prefixes, domain+ns+"/sa/")
	}
	slices.Sort(a.exact)
	a.exact = slices.Compact(a.exact)
	if len(a.exact) >= exactSetMin {
		a.exactSet = make(map[string]struct{}, len(a.exact))
		for _, id := range a.exact {
			a.exactSet[id] = struct{}{}
		}
	}
	return a, nil
}

// Selects reports whether a workload entry's selector matches a pod's labels, with Kubernetes label selector
// semantics: every matchLabels pair is a label of the pod; In needs the label with one of the values, NotIn its
// absence or another value, Exists the label, DoesNotExist its absence. An empty selector selects every pod.
func Selects(w *proxyconfig.InboundWorkload, labels map[string]string) bool {
	for k, v := range w.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range w.MatchExpressions {
		v, ok := labels[r.Key]
		switch r.Operator {
		case "In":
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case "NotIn":
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case "Exists":
			if !ok {
				return false
			}
		case "DoesNotExist":
			if ok {
				return false
			}
		default:
			return false
		}
	}
	return true
}
