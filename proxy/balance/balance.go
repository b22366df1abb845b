// Package balance defines how the proxy chooses an endpoint within a backend. Each algorithm lives in its own
// subpackage and implements Picker: ewma (power of two choices over peak-EWMA latency), leastrequest (power of two
// choices over requests in flight), roundrobin and random; accrual wraps any of them with failure accrual. States
// keeps the per-endpoint state of a Builder across reloads.
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

// DoneInfo reports how a picked endpoint served a request or connection. The caller classifies the outcome; the
// pickers only read it:
//
//   - success: Err is nil and Failed is false (an HTTP response the caller does not classify as a failure);
//   - failure: Err is non-nil (connect error, reset, timeout) or Failed is true (for example a 5xx response or a
//     grpc-status the caller counts as a failure); see Failure;
//   - neither: Canceled is true; the exchange says nothing about the endpoint's health (the client went away or the
//     proxy abandoned the attempt for its own reasons).
type DoneInfo struct {
	// Err is the failure, nil on success (an HTTP response of any status counts as success here; the caller reports a
	// failure for connect errors, resets and, if it classifies them so, 5xx).
	Err error
	// Latency is the time from the pick to the response headers (HTTP) or the connection's establishment (TCP). Zero
	// means not measured: latency-aware pickers then leave their estimate unchanged.
	Latency time.Duration
	// Failed marks a completed exchange that the caller classifies as an endpoint failure although Err is nil, such as
	// a 5xx response. Default false.
	Failed bool
	// Canceled marks an exchange that ended for reasons unrelated to the endpoint (client cancellation, proxy
	// shutdown). It counts neither as success nor as failure; Latency is then only a lower bound. Default false.
	Canceled bool
}

// Failure reports whether the outcome counts as an endpoint failure: Err is set or Failed is true, and the exchange
// was not Canceled.
func (d DoneInfo) Failure() bool { return !d.Canceled && (d.Err != nil || d.Failed) }

// Picker chooses an endpoint. Pick never blocks; it returns ErrNoEndpoints at once when it has nothing to offer. done
// must be called exactly once with the outcome; it is never nil.
type Picker interface {
	Pick() (ep *Endpoint, done func(DoneInfo), err error)
}

// Builder creates a Picker over a fixed endpoint set. A new set means a new Picker; per-endpoint state that must
// survive such a change (latency, in-flight counts, failure accrual) is kept by the builder outside the Picker, keyed
// by address (see States). A Builder may be shared by every backend of every snapshot and is safe for concurrent use.
type Builder func(endpoints []*Endpoint) Picker

// ErrNoEndpoints is returned by Pick when the backend has no endpoint to send to.
var ErrNoEndpoints = errors.New("no endpoints available")

// PickExcept picks with p up to tries times until it gets an endpoint whose address is not avoid, for a retry that
// should not go back to the endpoint that just failed. Discarded picks are reported Canceled (neutral); the last pick
// is returned whatever it is, so a backend with one endpoint still serves the retry.
func PickExcept(p Picker, avoid netip.AddrPort, tries int) (*Endpoint, func(DoneInfo), error) {
	for i := 1; ; i++ {
		ep, done, err := p.Pick()
		if err != nil || ep.Addr != avoid || i >= tries {
			return ep, done, err
		}
		done(DoneInfo{Canceled: true})
	}
}

// NoopDone is a done callback for pickers that keep no accounting.
func NoopDone(DoneInfo) {}
