// Package mtls holds the proxy's seams for mesh TLS: where the outbound side gets connections to endpoints and where
// the inbound side terminates the mesh's TLS. This issue ships the plain implementations; the mTLS ones come with the
// identity service and consume Credentials.
package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
)

// Credentials provides the workload's current certificate and trust roots (implemented later by internal/identity).
// Both methods are cheap and safe for concurrent use; they return the latest material after a rotation.
type Credentials interface {
	Certificate() *tls.Certificate
	Roots() *x509.CertPool
}

// Connector opens the upstream connection for one outbound request or connection. A mesh implementation wraps
// connections to endpoints that carry an Identity in TLS 1.3 with the workload's Credentials and checks that the
// server presents ep.Identity.
type Connector interface {
	Connect(ctx context.Context, ep *balance.Endpoint) (net.Conn, error)
}

// Plain connects over plain TCP, ignoring endpoint identities. It is the Connector until mesh TLS is enabled.
type Plain struct {
	// Timeout bounds the TCP handshake; 0 means no bound beyond ctx.
	Timeout time.Duration
}

var _ Connector = Plain{}

// Connect dials ep.Addr over TCP.
func (p Plain) Connect(ctx context.Context, ep *balance.Endpoint) (net.Conn, error) {
	d := net.Dialer{Timeout: p.Timeout}
	addr := ep.HostPort
	if addr == "" {
		addr = ep.Addr.String()
	}
	return d.DialContext(ctx, "tcp", addr)
}

// Peer is what the inbound side knows about the client after the handshake.
type Peer struct {
	// Identity is the client's SPIFFE ID from its certificate; empty for a client without mesh TLS.
	Identity string
}

// Terminator terminates the mesh's TLS on an inbound connection that began with a TLS ClientHello. It returns the
// decrypted connection and the verified peer, or ErrNotMesh when the ClientHello is not for the mesh (the application's
// own TLS), in which case the proxy forwards the connection untouched.
type Terminator interface {
	Terminate(ctx context.Context, conn net.Conn) (net.Conn, Peer, error)
}

// ErrNotMesh reports TLS that is not the mesh's own (for example the application terminating its own HTTPS).
var ErrNotMesh = errors.New("mtls: not mesh TLS")
