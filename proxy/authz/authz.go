// Package authz is the proxy's authorization hook for inbound traffic: it is asked once per inbound TCP connection
// forwarded as opaque bytes and once per inbound HTTP request whether the client may proceed. Default implements the
// Mesh's default policies; per-port and per-route authorizations (MeshPolicy) plug in as further Authorizers that
// fall back to it.
package authz

import (
	"net/netip"
	"strings"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
)

// Request describes the client and what it asks for.
type Request struct {
	// Port is the inbound (application) port.
	Port uint16
	// Client is the client's address.
	Client netip.AddrPort
	// Identity is the client's verified SPIFFE ID; empty when the client is not authenticated by mesh TLS.
	Identity string
	// Route is the matched inbound HTTP route's name; empty for TCP and for requests that match no route.
	Route string
	// DefaultPolicy is the port's default policy in the running configuration (inbound.ports[].defaultPolicy, else
	// inbound.defaultPolicy); empty means all-unauthenticated.
	DefaultPolicy string
}

// Decision is an Authorizer's answer.
type Decision struct {
	// Allow admits the request.
	Allow bool
	// Authorization names the rule that decided, for metrics and logs: "default:<policy>" for a default policy,
	// "probe" for a kubelet probe port.
	Authorization string
	// Reason explains a denial to the client (the trellis-deny-reason header of a 403) and in logs.
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
	return Decision{Allow: true, Authorization: ruleAllUnauthenticated}
}

// Rule names (the "rule" metric label).
const (
	ruleAllUnauthenticated   = "default:" + proxyconfig.PolicyAllUnauthenticated
	ruleAllAuthenticated     = "default:" + proxyconfig.PolicyAllAuthenticated
	ruleClusterAuthenticated = "default:" + proxyconfig.PolicyClusterAuthenticated
	ruleDeny                 = "default:" + proxyconfig.PolicyDeny
	// RuleProbe names the decision that admits traffic to a kubelet probe port.
	RuleProbe = "probe"
)

// Denial reasons.
const (
	ReasonUnauthenticated = "client is not authenticated"
	ReasonForeignDomain   = "client identity is not in the cluster's trust domain"
	ReasonOutsideNetworks = "unauthenticated client is outside the cluster networks"
	ReasonDenied          = "port denies all traffic"
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

// Default decides by the port's default policy:
//   - all-unauthenticated: every client;
//   - all-authenticated: clients with a verified mesh identity;
//   - cluster-authenticated: clients with a mesh identity of the cluster's trust domain, and clients without one whose
//     address is in the cluster networks;
//   - deny: nobody.
//
// Traffic to a kubelet probe port is always allowed, whatever the policy.
type Default struct {
	domainPrefix string // "spiffe://<trust domain>/"
	probes       []uint16
	networks     []netip.Prefix
}

var _ Authorizer = (*Default)(nil)

// DefaultOptions configure NewDefault.
type DefaultOptions struct {
	// TrustDomain is the cluster's trust domain. Default "cluster.local".
	TrustDomain string
	// ProbePorts are the container ports kubelet probes target; they are always allowed.
	ProbePorts []uint16
	// ClusterNetworks are the client networks cluster-authenticated admits without identity. Default
	// DefaultClusterNetworks.
	ClusterNetworks []netip.Prefix
}

// NewDefault returns the default-policy Authorizer.
func NewDefault(o DefaultOptions) *Default {
	if o.TrustDomain == "" {
		o.TrustDomain = "cluster.local"
	}
	if o.ClusterNetworks == nil {
		o.ClusterNetworks = DefaultClusterNetworks
	}
	return &Default{domainPrefix: "spiffe://" + o.TrustDomain + "/", probes: o.ProbePorts, networks: o.ClusterNetworks}
}

// Authorize applies the port's default policy.
func (d *Default) Authorize(r Request) Decision {
	for _, p := range d.probes {
		if p == r.Port {
			return Decision{Allow: true, Authorization: RuleProbe}
		}
	}
	switch r.DefaultPolicy {
	case proxyconfig.PolicyAllAuthenticated:
		if r.Identity == "" {
			return Decision{Authorization: ruleAllAuthenticated, Reason: ReasonUnauthenticated}
		}
		return Decision{Allow: true, Authorization: ruleAllAuthenticated}
	case proxyconfig.PolicyClusterAuthenticated:
		switch {
		case r.Identity != "" && strings.HasPrefix(r.Identity, d.domainPrefix):
			return Decision{Allow: true, Authorization: ruleClusterAuthenticated}
		case r.Identity != "":
			return Decision{Authorization: ruleClusterAuthenticated, Reason: ReasonForeignDomain}
		case d.inNetworks(r.Client.Addr()):
			return Decision{Allow: true, Authorization: ruleClusterAuthenticated}
		}
		return Decision{Authorization: ruleClusterAuthenticated, Reason: ReasonOutsideNetworks}
	case proxyconfig.PolicyDeny:
		return Decision{Authorization: ruleDeny, Reason: ReasonDenied}
	}
	return Decision{Allow: true, Authorization: ruleAllUnauthenticated}
}

func (d *Default) inNetworks(a netip.Addr) bool {
	a = a.Unmap()
	for _, n := range d.networks {
		if n.Contains(a) {
			return true
		}
	}
	return false
}
