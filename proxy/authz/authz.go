// Package authz is the proxy's authorization of inbound traffic: it is asked once per inbound TCP connection
// forwarded as opaque bytes and once per inbound HTTP request whether the client may proceed.
//
// Compile turns the configuration's inbound section into a Table for one pod (its namespace and labels pick the
// workload entries that apply); each port's settings become an immutable Policy. Default is the proxy's Authorizer:
// the kubelet's HTTP probes are allowed by path and its other probes by port; then the port Policy's authorizations,
// then its routes' authorizations (HTTP), may allow the client; otherwise the port's default policy decides.
package authz

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
)

// HTTPRequest is what route matching reads from an HTTP request. Implementations must not allocate.
type HTTPRequest interface {
	Method() string
	Path() string
	// Header returns the first value of the header named by a lowercase name.
	Header(lowerName string) (string, bool)
}

// Request describes the client and what it asks for.
type Request struct {
	// Port is the inbound (application) port.
	Port uint16
	// Client is the client's address.
	Client netip.AddrPort
	// Identity is the client's verified SPIFFE ID; empty when the client is not authenticated by mesh TLS.
	Identity string
	// HTTP is the request, for route matching; nil for a connection relayed as bytes.
	HTTP HTTPRequest
	// Policy is the port's compiled settings in the running configuration (Table.Policy). Default nil: DefaultPolicy
	// alone decides.
	Policy *Policy
	// DefaultPolicy is the port's default policy when Policy is nil; empty means all-unauthenticated.
	DefaultPolicy string
}

// Decision is an Authorizer's answer.
type Decision struct {
	// Allow admits the request.
	Allow bool
	// Authorization names the rule that decided, for metrics and logs: "<source>/<authorization name>" for an
	// authorization (source: the workload entry, or "port-<n>" for inbound.ports), "default:<policy>" for a default
	// policy, "probe" for a kubelet probe's path or port.
	Authorization string
	// Route is the inbound route the request was allowed on, else the first route whose matches it meets; empty
	// for TCP and for requests no route matches.
	Route string
	// Reason explains a denial to the client (the trellis-deny-reason header of a 403) and in logs, starting with
	// the rule that decided: "default:deny: no authorization of shop/web allows the client".
	Reason string
}

// Authorizer decides inbound requests. Authorize must not block, must not allocate on the hot path and must be safe
// for concurrent use; denied HTTP requests get 403 and denied TCP connections are closed.
type Authorizer interface {
	Authorize(Request) Decision
}

// AllowAll admits everything; it matches the default policy "all-unauthenticated".
type AllowAll struct{}

var _ Authorizer = AllowAll{}

// Authorize allows the request.
func (AllowAll) Authorize(Request) Decision {
	return Decision{Allow: true, Authorization: ruleDefault + proxyconfig.PolicyAllUnauthenticated}
}

// Rule names (the "rule" metric label).
const (
	ruleDefault = "default:"
	// RuleProbe names the decision that admits a kubelet probe: a request for an HTTP probe's path, or traffic to the
	// port of another kind of probe.
	RuleProbe = "probe"
)

// Denial reasons, after the rule in Decision.Reason.
const (
	ReasonUnauthenticated = "client is not authenticated"
	ReasonForeignDomain   = "client identity is not in the cluster's trust domain"
	ReasonOutsideNetworks = "unauthenticated client is outside the cluster networks"
	ReasonDenied          = "port denies all traffic"
	// ReasonNotAuthorized is followed by the source of the port's settings: "no authorization of shop/web allows
	// the client".
	ReasonNotAuthorized = "no authorization of %s allows the client"
)

// DefaultClusterNetworks are the client networks that the cluster-authenticated policy admits without mesh identity
// when no others are configured: the private IPv4 ranges of RFC 1918 and IPv6 unique local addresses (RFC 4193),
// where pod and service networks live in practice.
var DefaultClusterNetworks = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("fc00::/7"),
}

// Default is the proxy's Authorizer. In order:
//   - an HTTP GET or HEAD request whose path is the path of a kubelet HTTP probe on its port (DefaultOptions.ProbePaths)
//     is allowed, whatever client sends it; the port's other requests are not;
//   - traffic to the port of a kubelet TCP, gRPC or HTTPS probe (DefaultOptions.ProbePorts), HTTP or not, is allowed:
//     the proxy cannot tell such a probe from other traffic to the port;
//   - the port's authorizations (Request.Policy) may allow the client, and for HTTP the authorizations of every
//     route whose matches the request meets;
//   - otherwise the port's default policy decides:
//   - all-unauthenticated: every client;
//   - all-authenticated: clients with a verified mesh identity;
//   - cluster-authenticated: clients with a mesh identity of the cluster's trust domain, and clients without one
//     whose address is in the cluster networks;
//   - deny: nobody.
type Default struct {
	domainPrefix string // "spiffe://<trust domain>/"
	probePaths   []ProbePath
	probes       []uint16
	networks     []netip.Prefix
}

var _ Authorizer = (*Default)(nil)

// DefaultOptions configure NewDefault.
type DefaultOptions struct {
	// TrustDomain is the cluster's trust domain. Default "cluster.local".
	TrustDomain string
	// ProbePaths are the paths of the kubelet's HTTP probes: GET and HEAD requests for them are allowed on their port.
	// Default none.
	ProbePaths []ProbePath
	// ProbePorts are the container ports of the kubelet's TCP, gRPC and HTTPS probes: all traffic to them is allowed.
	// Default none.
	ProbePorts []uint16
	// ClusterNetworks are the client networks cluster-authenticated admits without identity. Default
	// DefaultClusterNetworks.
	ClusterNetworks []netip.Prefix
}

// DefaultTrustDomain is the trust domain used when none is configured.
const DefaultTrustDomain = "cluster.local"

// NewDefault returns the proxy's Authorizer.
func NewDefault(o DefaultOptions) *Default {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.ClusterNetworks == nil {
		o.ClusterNetworks = DefaultClusterNetworks
	}
	return &Default{domainPrefix: "spiffe://" + o.TrustDomain + "/", probePaths: o.ProbePaths, probes: o.ProbePorts,
		networks: o.ClusterNetworks}
}

// Authorize decides r.
func (d *Default) Authorize(r Request) Decision {
	if r.HTTP != nil && d.probeRequest(r.Port, r.HTTP) {
		return Decision{Allow: true, Authorization: RuleProbe}
	}
	for _, p := range d.probes {
		if p == r.Port {
			return Decision{Allow: true, Authorization: RuleProbe}
		}
	}
	p := r.Policy
	if p == nil {
		p = basePolicy(r.DefaultPolicy)
	}
	client := r.Client.Addr().Unmap()
	for i := range p.authorizations {
		if a := &p.authorizations[i]; a.allows(client, r.Identity) {
			d := Decision{Allow: true, Authorization: a.rule}
			if r.HTTP != nil {
				d.Route = p.firstRoute(r.HTTP)
			}
			return d
		}
	}
	route := ""
	if r.HTTP != nil {
		for i := range p.routes {
			rt := &p.routes[i]
			if !rt.matcher.Matches(r.HTTP) {
				continue
			}
			if route == "" {
				route = rt.name
			}
			for j := range rt.authorizations {
				if a := &rt.authorizations[j]; a.allows(client, r.Identity) {
					return Decision{Allow: true, Authorization: a.rule, Route: rt.name}
				}
			}
		}
	}
	dec := d.byDefault(p, client, r.Identity)
	dec.Route = route
	return dec
}

// probeRequest reports whether r asks for the path of an HTTP probe of port with GET or HEAD. The request is read only
// when the port has probe paths.
func (d *Default) probeRequest(port uint16, r HTTPRequest) bool {
	path, read := "", false
	for i := range d.probePaths {
		pp := &d.probePaths[i]
		if pp.Port != port {
			continue
		}
		if !read {
			if m := r.Method(); m != "GET" && m != "HEAD" {
				return false
			}
			path, read = r.Path(), true
		}
		if pp.Path == path {
			return true
		}
	}
	return false
}

// ProbePath is the path of a kubelet HTTP probe on a container port.
type ProbePath struct {
	// Port is the container port.
	Port uint16
	// Path is the request path, without the query; it starts with "/" and is compared exactly with the request's.
	Path string
}

// ParseProbePaths parses a comma-separated list of port:path pairs ("8080:/healthz,8080:/ready"), the form the
// injector writes; spaces around items are ignored and "" is an empty list.
func ParseProbePaths(s string) ([]ProbePath, error) {
	var out []ProbePath
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		port, path, ok := strings.Cut(item, ":")
		if !ok {
			return nil, fmt.Errorf("%q: want port:path", item)
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q: %q is not a port (1-65535)", item, port)
		}
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t?") {
			return nil, fmt.Errorf("%q: the path must start with / and hold no space or query", item)
		}
		out = append(out, ProbePath{Port: uint16(n), Path: path})
	}
	return out, nil
}

// byDefault applies the policy's default.
func (d *Default) byDefault(p *Policy, client netip.Addr, identity string) Decision {
	switch p.kind {
	case kindAllAuthenticated:
		if identity == "" {
			return Decision{Authorization: p.rule, Reason: p.reasons[reasonUnauthenticated]}
		}
	case kindClusterAuthenticated:
		switch {
		case identity != "" && strings.HasPrefix(identity, d.domainPrefix):
		case identity != "":
			return Decision{Authorization: p.rule, Reason: p.reasons[reasonForeignDomain]}
		case !inNetworks(d.networks, client):
			return Decision{Authorization: p.rule, Reason: p.reasons[reasonOutsideNetworks]}
		}
	case kindDeny:
		return Decision{Authorization: p.rule, Reason: p.reasons[reasonDenied]}
	}
	return Decision{Allow: true, Authorization: p.rule}
}

func inNetworks(networks []netip.Prefix, a netip.Addr) bool {
	for _, n := range networks {
		if n.Contains(a) {
			return true
		}
	}
	return false
}
