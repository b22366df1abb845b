// Package balance defines how the proxy chooses an endpoint within a backend. Each algorithm lives in its own
// subpackage and implements Picker.
package balance

import (
	"errors"
	"net/netip"
	"time"
)

// Endpoint is one address a backend can send to. Endpoints are immutable and shared between snapshots.
type Endpoint struct {
	// Addr is the endpoint's IP and port.
	Addr netip.AddrPort
	// HostPort is Addr formatted as "ip:port" ("[ip]:port" for IPv6), computed once by NewEndpoint.
	HostPort string
	// Identity is the SPIFFE ID the endpoint must present in mTLS; empty for an unmeshed endpoint.
	Identity string
	// Zone is the endpoint's topology zone; empty when unknown.
	Zone string
}

// NewEndpoint returns an Endpoint with HostPort filled in.
func NewEndpoint(addr netip.AddrPort, identity, zone string) *Endpoint {
	return &Endpoint{Addr: addr, HostPort: addr.String(), Identity: identity, Zone: zone}
}

// DoneInfo reports how a picked endpoint served a request or connection.
type DoneInfo struct {
	// Err is the failure, nil on success (an HTTP response of any status counts as success here; the caller reports a
	// failure for connect errors, resets and, if it classifies them so, 5xx).
	Err error
	// Latency is the time from the pick to the response headers (HTTP) or the connection's establishment (TCP).
	Latency time.Duration
}

// Picker chooses an endpoint. Pick never blocks; it returns ErrNoEndpoints at once when it has nothing to offer. done
// must be called exactly once with the outcome; it is never nil.
type Picker interface {
	Pick() (ep *Endpoint, done func(DoneInfo), err error)
}

// Builder creates a Picker over a fixed endpoint set. A new set means a new Picker; per-endpoint state that must
// survive such a change (latency, failure counts) is kept by the builder outside the Picker, keyed by address.
type Builder func(endpoints []*Endpoint) Picker

// ErrNoEndpoints is returned by Pick when the backend has no endpoint to send to.
var ErrNoEndpoints = errors.New("no endpoints available")

// NoopDone is a done callback for pickers that keep no accounting.
func NoopDone(DoneInfo) {}
