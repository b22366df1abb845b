// Package authz is the proxy's authorization hook for inbound traffic: it is asked once per inbound TCP connection and
// once per inbound HTTP request whether the client may proceed.
package authz

import "net/netip"

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
}

// Decision is an Authorizer's answer.
type Decision struct {
	// Allow admits the request.
	Allow bool
	// Authorization names the rule that decided, for metrics and logs ("default:<policy>" for a default policy).
	Authorization string
}

// Authorizer decides inbound requests. Authorize must not block and must be safe for concurrent use; denied HTTP
// requests get 403 and denied TCP connections are closed.
type Authorizer interface {
	Authorize(Request) Decision
}

// AllowAll admits everything. It is the Authorizer until policy enforcement lands; it matches the default policy
// "all-unauthenticated".
type AllowAll struct{}

var _ Authorizer = AllowAll{}

// Authorize allows the request.
func (AllowAll) Authorize(Request) Decision {
	return Decision{Allow: true, Authorization: "default:all-unauthenticated"}
}
