// Package snapshot compiles a validated proxyconfig document into an immutable Snapshot that the request path reads
// without locks, and holds the current one in a Store that is swapped atomically on reload.
package snapshot

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/authz"
	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/circuit"
	"github.com/trellis-mesh/trellis/proxy/headers"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/retry"
)

// Snapshot is one compiled configuration. It is never modified after Compile returns; requests keep using the
// snapshot they started with while a newer one is swapped in.
type Snapshot struct {
	// Version and Hash identify the document this snapshot was compiled from.
	Version, Hash string
	// LoadedAt is when the snapshot was compiled.
	LoadedAt time.Time
	// Source lists the files the document was read from.
	Source []string
	// DetectTimeout, ConnectTimeout, RequestTimeout, TCPIdleTimeout and HTTPIdleTimeout are the document's defaults.
	DetectTimeout, ConnectTimeout, RequestTimeout, TCPIdleTimeout, HTTPIdleTimeout time.Duration
	// DefaultPolicy is inbound.defaultPolicy: the authorization policy of ports without their own.
	DefaultPolicy string

	services     map[netip.AddrPort]*Service
	inbound      map[uint16]*InboundPort
	inboundOther *authz.Policy // authorization of the inbound ports nothing lists
	opaque       map[uint16]bool
}

// Service is a compiled service port.
type Service struct {
	// Name and Namespace identify the Kubernetes Service.
	Name, Namespace string
	// Authority is "<name>.<namespace>.svc.<clusterDomain>:<port>", the authority label of its metrics.
	Authority string
	// Opaque is true when the service's protocol hint is "opaque": its connections skip detection.
	Opaque bool
	// Routes are tried in order; Default serves requests that match none, and every TCP connection.
	Routes []*Route
	// Default is the service-level route (its backends with their weights, route label "").
	Default *Route
	// TCP records the service's outbound TCP connections to endpoints without mesh TLS.
	TCP *metrics.TCP
	// Breaker holds the service's circuit-breaking limits and counts (shared with other snapshots of the service).
	Breaker *circuit.Breaker

	meshTCP map[string]*metrics.TCP // by endpoint identity, when mesh TLS is on
}

// Route is a compiled HTTP route.
type Route struct {
	// Name is the route's name (the metrics "route" label).
	Name string
	// Timeout bounds the time from the request to its response headers, retries included; 0 means none.
	Timeout time.Duration
	// Retry says which failed attempts are retried, within the service's retry budget. Never nil: a route without a
	// retry policy retries connect failures and refused streams only.
	Retry *retry.Plan
	// RequestHeaders and ResponseHeaders are the route's header modifiers; nil changes nothing.
	RequestHeaders, ResponseHeaders *headers.Modifier
	// Metrics records the route's requests and responses to endpoints without mesh TLS.
	Metrics *metrics.Route
	// DirectStatus, when not 0, is the status the proxy answers the route's requests with itself, DirectReason saying
	// why; the route has no backends then.
	DirectStatus int
	DirectReason string

	meshMetrics map[string]*metrics.Route // by endpoint identity, when mesh TLS is on
	matches     []match
	backends    []*Backend
	cumul       []uint64 // cumulative weights of backends
	randN       func(uint64) uint64
}

// Backend is a compiled backend: a weighted set of endpoints behind a Picker.
type Backend struct {
	// Name and Namespace identify the leaf service.
	Name, Namespace string
	// Picker chooses among Endpoints.
	Picker balance.Picker
	// Endpoints are the backend's endpoints.
	Endpoints []*balance.Endpoint
	// Unresolved, when not empty, says why the backend does not exist: requests sent to it fail with 500 and this
	// reason.
	Unresolved string
}

// InboundPort is a compiled inbound port.
type InboundPort struct {
	// Port is the application port.
	Port uint16
	// Name is the port's name.
	Name string
	// Opaque is true when the port's protocol hint is "opaque".
	Opaque bool
	// DefaultPolicy is the port's default authorization policy.
	DefaultPolicy string
	// Authz is the port's compiled authorization: its authorizations, routes and default policy.
	Authz *authz.Policy
}

// Request is what route matching reads from an HTTP request. Implementations must not allocate.
type Request interface {
	Method() string
	Path() string
	// Header returns the first value of the header named by a lowercase name.
	Header(lowerName string) (string, bool)
}

// Service returns the service for a destination, or nil for an unknown destination.
func (s *Snapshot) Service(dst netip.AddrPort) *Service {
	return s.services[netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())]
}

// Inbound returns the settings of an inbound port, or nil when the document has none for it.
func (s *Snapshot) Inbound(port uint16) *InboundPort { return s.inbound[port] }

// OpaquePort reports whether port is listed in opaquePorts (or in Options.OpaquePorts).
func (s *Snapshot) OpaquePort(port uint16) bool { return s.opaque[port] }

// Policy returns the default authorization policy of an inbound port: its own (from the workload entry or
// inbound.ports entry that decides it), else inbound.defaultPolicy.
func (s *Snapshot) Policy(port uint16) string {
	if p := s.Authz(port); p != nil {
		return p.DefaultPolicy
	}
	return s.DefaultPolicy
}

// MetricsFor returns the recorder of the route's requests to an endpoint with the given identity: labelled
// tls="true" and server_id=identity when the snapshot was compiled with mesh TLS and identity is not empty, else
// Metrics.
func (rt *Route) MetricsFor(identity string) *metrics.Route {
	if identity != "" {
		if m := rt.meshMetrics[identity]; m != nil {
			return m
		}
	}
	return rt.Metrics
}

// TCPFor returns the recorder of the service's TCP connections to an endpoint with the given identity, like
// Route.MetricsFor.
func (svc *Service) TCPFor(identity string) *metrics.TCP {
	if identity != "" {
		if m := svc.meshTCP[identity]; m != nil {
			return m
		}
	}
	return svc.TCP
}

// Route returns the first route that matches r, or the service's Default route.
func (svc *Service) Route(r Request) *Route {
	for _, rt := range svc.Routes {
		if rt.Matches(r) {
			return rt
		}
	}
	return svc.Default
}

// Matches reports whether r matches the route (a route without matches matches everything).
func (rt *Route) Matches(r Request) bool {
	if len(rt.matches) == 0 {
		return true
	}
	for i := range rt.matches {
		if rt.matches[i].matches(r) {
			return true
		}
	}
	return false
}

// Backend picks a backend by weight; nil when every weight is 0.
func (rt *Route) Backend() *Backend {
	switch len(rt.backends) {
	case 0:
		return nil
	case 1:
		return rt.backends[0]
	}
	total := rt.cumul[len(rt.cumul)-1]
	if total == 0 {
		return nil
	}
	x := rt.randN(total)
	for i, c := range rt.cumul {
		if x < c {
			return rt.backends[i]
		}
	}
	return rt.backends[len(rt.backends)-1]
}

type match struct {
	method   string
	pathType string
	path     string
	pathRE   *regexp.Regexp
	headers  []headerMatch
}

type headerMatch struct {
	name  string
	value string
	re    *regexp.Regexp
}

func (m *match) matches(r Request) bool {
	if m.method != "" && r.Method() != m.method {
		return false
	}
	if m.pathType != "" {
		p := r.Path()
		switch m.pathType {
		case proxyconfig.MatchExact:
			if p != m.path {
				return false
			}
		case proxyconfig.MatchPathPrefix:
			if !pathPrefix(p, m.path) {
				return false
			}
		case proxyconfig.MatchRegularExpression:
			if !m.pathRE.MatchString(p) {
				return false
			}
		}
	}
	for _, h := range m.headers {
		v, ok := r.Header(h.name)
		if !ok || (h.re == nil && v != h.value) || (h.re != nil && !h.re.MatchString(v)) {
			return false
		}
	}
	return true
}

// pathPrefix matches prefix on path-segment boundaries.
func pathPrefix(path, prefix string) bool {
	if prefix == "/" {
		return true
	}
	prefix = strings.TrimSuffix(prefix, "/")
	return strings.HasPrefix(path, prefix) && (len(path) == len(prefix) || path[len(prefix)] == '/')
}

// Options are the compiler's collaborators.
type Options struct {
	// Metrics provides the per-service and per-route recorders. Required.
	Metrics *metrics.Metrics
	// Traffic holds the balancers, failure accrual, retry budgets and circuit breakers that outlive snapshots. Create
	// one per proxy and pass it to every Compile. Default: a new one (state then does not survive the snapshot).
	Traffic *Traffic
	// RandN returns a number in [0, n) for weighted backend choice. Default math/rand/v2.Uint64N.
	RandN func(n uint64) uint64
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// MeshTLS says that endpoints with an identity are reached over mesh TLS, so their traffic is recorded with
	// tls="true" and server_id. Default false: identities are ignored.
	MeshTLS bool
	// OpaquePorts are added to the document's opaquePorts (the proxy's --opaque-ports).
	OpaquePorts []uint16
	// PodNamespace and PodLabels describe the proxy's pod: inbound.workloads entries apply when their namespace is
	// PodNamespace and their selector matches PodLabels. Default empty: no workload entry applies.
	PodNamespace string
	PodLabels    map[string]string
	// TrustDomain turns the ServiceAccounts and namespaces of inbound authorizations into SPIFFE IDs. Default
	// "cluster.local".
	TrustDomain string
}

// Compile turns a loaded (defaulted, validated) document into a Snapshot.
func Compile(l *proxyconfig.Loaded, o Options) (*Snapshot, error) {
	if o.RandN == nil {
		o.RandN = rand.Uint64N
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Traffic == nil {
		o.Traffic = NewTraffic(TrafficOptions{})
	}
	c := l.Config
	d := c.Defaults
	s := &Snapshot{
		Version: c.Version, Hash: l.Hash, LoadedAt: o.Now(), Source: l.Files,
		DetectTimeout: d.DetectTimeout.Duration, ConnectTimeout: d.ConnectTimeout.Duration,
		RequestTimeout: d.RequestTimeout.Duration, TCPIdleTimeout: d.TCPIdleTimeout.Duration,
		HTTPIdleTimeout: d.HTTPIdleTimeout.Duration, DefaultPolicy: c.Inbound.DefaultPolicy,
		services: map[netip.AddrPort]*Service{}, inbound: map[uint16]*InboundPort{}, opaque: map[uint16]bool{},
	}
	for i := range c.Services {
		svc, err := compileService(&c.Services[i], c, d, o)
		if err != nil {
			return nil, fmt.Errorf("services[%d]: %w", i, err)
		}
		for _, ip := range c.Services[i].ClusterIPs {
			a := netip.MustParseAddr(ip).Unmap()
			s.services[netip.AddrPortFrom(a, uint16(c.Services[i].Port))] = svc
		}
	}
	inbound, table, err := compileInbound(c, o)
	if err != nil {
		return nil, fmt.Errorf("inbound: %w", err)
	}
	s.inbound, s.inboundOther = inbound, table.Other()
	for _, p := range c.OpaquePorts {
		s.opaque[uint16(p)] = true
	}
	for _, p := range o.OpaquePorts {
		s.opaque[p] = true
	}
	return s, nil
}

func compileService(cs *proxyconfig.Service, c *proxyconfig.Config, d *proxyconfig.Defaults, o Options) (*Service,
	error) {
	st, err := o.Traffic.service(cs, d)
	if err != nil {
		return nil, err
	}
	svc := &Service{
		Name: cs.Name, Namespace: cs.Namespace, Opaque: cs.Protocol == proxyconfig.ProtocolOpaque,
		Authority: fmt.Sprintf("%s.%s.svc.%s:%d", cs.Name, cs.Namespace, c.ClusterDomain, cs.Port),
		Breaker:   st.breaker,
	}
	st.breaker.SetCounters(circuit.Counters{
		Pending: o.Metrics.Rejected(cs.Namespace, cs.Name, "maxPendingRequests"),
		Wait:    o.Metrics.Rejected(cs.Namespace, cs.Name, "maxRequests"),
		Conn:    o.Metrics.Rejected(cs.Namespace, cs.Name, "maxConnections"),
	})
	build := st.accrual.Build
	svc.TCP = o.Metrics.TCP(metrics.TCPLabels{Direction: metrics.Outbound, TLS: "false",
		DstNamespace: cs.Namespace, DstService: cs.Name})
	backends := map[string]*Backend{}
	var all []*Backend
	var weights []int32
	for _, b := range cs.Backends {
		eps := make([]*balance.Endpoint, 0, len(b.Endpoints))
		for _, e := range b.Endpoints {
			eps = append(eps, balance.NewEndpoint(netip.MustParseAddrPort(e.Address), e.Identity, e.Zone))
		}
		cb := &Backend{Name: b.Name, Namespace: b.Namespace, Picker: build(eps), Endpoints: eps,
			Unresolved: b.Unresolved}
		backends[b.Name] = cb
		all = append(all, cb)
		weights = append(weights, *b.Weight)
	}
	if o.MeshTLS {
		for _, id := range identities(all) {
			if svc.meshTCP == nil {
				svc.meshTCP = map[string]*metrics.TCP{}
			}
			svc.meshTCP[id] = o.Metrics.TCP(metrics.TCPLabels{Direction: metrics.Outbound, TLS: "true",
				DstNamespace: cs.Namespace, DstService: cs.Name, ServerID: id})
		}
	}
	newRoute := func(name string, timeout time.Duration, rp *proxyconfig.RetryPolicy, bs []*Backend,
		ws []int32) (*Route, error) {
		plan, err := compileRetry(rp, st.budget, o.Traffic.o.Int64N, retry.Counters{
			Attempted:       o.Metrics.RetryCounter(cs.Namespace, cs.Name, name, retry.ResultAttempted),
			BudgetExhausted: o.Metrics.RetryCounter(cs.Namespace, cs.Name, name, retry.ResultBudgetExhausted),
			NotRetryable:    o.Metrics.RetryCounter(cs.Namespace, cs.Name, name, retry.ResultNotRetryable),
			LimitReached:    o.Metrics.RetryCounter(cs.Namespace, cs.Name, name, retry.ResultLimitReached),
		})
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", name, err)
		}
		rt := &Route{Name: name, Timeout: timeout, Retry: plan, backends: bs, randN: o.RandN}
		var sum uint64
		for _, w := range ws {
			sum += uint64(w)
			rt.cumul = append(rt.cumul, sum)
		}
		l := metrics.HTTPLabels{Direction: metrics.Outbound, Authority: svc.Authority, TLS: "false",
			DstNamespace: cs.Namespace, DstService: cs.Name, Route: name}
		rt.Metrics = o.Metrics.Route(l)
		if o.MeshTLS {
			for _, id := range identities(bs) {
				if rt.meshMetrics == nil {
					rt.meshMetrics = map[string]*metrics.Route{}
				}
				l.TLS, l.ServerID = "true", id
				rt.meshMetrics[id] = o.Metrics.Route(l)
			}
		}
		return rt, nil
	}
	if svc.Default, err = newRoute("", d.RequestTimeout.Duration, nil, all, weights); err != nil {
		return nil, err
	}
	for _, r := range cs.Routes {
		bs, ws := all, weights
		if len(r.Backends) > 0 {
			bs, ws = nil, nil
			for _, ref := range r.Backends {
				bs = append(bs, backends[ref.Name])
				ws = append(ws, *ref.Weight)
			}
		}
		timeout := d.RequestTimeout.Duration
		if r.Timeout != nil {
			timeout = r.Timeout.Duration
		}
		rt, err := newRoute(r.Name, timeout, r.Retry, bs, ws)
		if err != nil {
			return nil, err
		}
		rt.RequestHeaders, rt.ResponseHeaders = modifier(r.RequestHeaders), modifier(r.ResponseHeaders)
		if d := r.DirectResponse; d != nil {
			rt.DirectStatus, rt.DirectReason = int(d.Status), d.Reason
			if rt.DirectReason == "" {
				rt.DirectReason = http.StatusText(rt.DirectStatus)
			}
			rt.backends, rt.cumul = nil, nil
		}
		for _, m := range r.Matches {
			cm, err := compileMatch(m)
			if err != nil {
				return nil, fmt.Errorf("route %q: %w", r.Name, err)
			}
			rt.matches = append(rt.matches, cm)
		}
		svc.Routes = append(svc.Routes, rt)
	}
	return svc, nil
}

// DefaultConnectRetries is how many times a request of a route without a retry policy is retried after a connect
// failure or a refused stream (on another pick, within the retry budget).
const DefaultConnectRetries = 2

// compileRetry returns the retry plan of a route with policy rp (nil: connect failures and refused streams only).
func compileRetry(rp *proxyconfig.RetryPolicy, budget *retry.Budget, int64n func(int64) int64,
	counters retry.Counters) (*retry.Plan, error) {
	plan := &retry.Plan{Budget: budget, Backoff: retry.Backoff{Int64N: int64n}, Attempts: DefaultConnectRetries,
		Counters: counters}
	if rp == nil {
		p, err := retry.NewPolicy(nil, retry.PolicyOptions{})
		plan.Policy = p
		return plan, err
	}
	p, err := retry.NewPolicy(rp.RetryOn, retry.PolicyOptions{RetryNonIdempotent: rp.NonIdempotent})
	if err != nil {
		return nil, err
	}
	plan.Policy, plan.Attempts = p, int(*rp.Attempts)
	if rp.PerTryTimeout != nil {
		plan.PerTryTimeout = rp.PerTryTimeout.Duration
	}
	if rp.Backoff != nil {
		plan.Backoff.Base, plan.Backoff.Max = rp.Backoff.Base.Duration, rp.Backoff.Max.Duration
	}
	if rp.MaxBodyBytes != nil {
		plan.MaxBodyBytes = int(*rp.MaxBodyBytes)
	}
	return plan, nil
}

// modifier compiles a header modifier of the document (nil for none).
func modifier(m *proxyconfig.HeaderModifier) *headers.Modifier {
	if m == nil {
		return nil
	}
	conv := func(in []proxyconfig.HeaderValue) []headers.Field {
		out := make([]headers.Field, len(in))
		for i, h := range in {
			out[i] = headers.Field{Name: h.Name, Value: h.Value}
		}
		return out
	}
	return headers.New(conv(m.Set), conv(m.Add), m.Remove)
}

// identities returns the distinct endpoint identities of backends.
func identities(backends []*Backend) []string {
	var ids []string
	for _, b := range backends {
		for _, ep := range b.Endpoints {
			if ep.Identity != "" && !slices.Contains(ids, ep.Identity) {
				ids = append(ids, ep.Identity)
			}
		}
	}
	return ids
}

func compileMatch(m proxyconfig.Match) (match, error) {
	cm := match{method: m.Method}
	if m.Path != nil {
		cm.pathType, cm.path = m.Path.Type, m.Path.Value
		if m.Path.Type == proxyconfig.MatchRegularExpression {
			re, err := regexp.Compile("^(?:" + m.Path.Value + ")$")
			if err != nil {
				return cm, err
			}
			cm.pathRE = re
		}
	}
	for _, h := range m.Headers {
		hm := headerMatch{name: strings.ToLower(h.Name), value: h.Value}
		if h.Type == proxyconfig.MatchRegularExpression {
			re, err := regexp.Compile("^(?:" + h.Value + ")$")
			if err != nil {
				return cm, err
			}
			hm.re = re
		}
		cm.headers = append(cm.headers, hm)
	}
	return cm, nil
}

// Store holds the current Snapshot. Load is a single atomic read, safe from any goroutine.
type Store struct {
	p atomic.Pointer[Snapshot]
}

// Load returns the current snapshot, nil before the first Swap.
func (s *Store) Load() *Snapshot { return s.p.Load() }

// Swap installs next and returns the previous snapshot.
func (s *Store) Swap(next *Snapshot) *Snapshot { return s.p.Swap(next) }
