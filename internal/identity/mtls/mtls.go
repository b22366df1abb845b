// Package mtls builds the TLS configurations for proxy-to-proxy traffic: TLS 1.3 only, both sides present an
// X.509-SVID, both verify the peer's chain against the current trust roots, and both know the peer's SPIFFE ID.
//
// Certificates and roots are read from Credentials on every handshake, so a renewed certificate or a reloaded trust
// bundle takes effect for the next handshake without rebuilding the configs. Chains are verified by hand in
// VerifyConnection (InsecureSkipVerify on the client, RequireAnyClientCert on the server) because SPIFFE IDs are URI
// SANs, which Go's built-in verification does not match, and because the built-in checks would pin the roots the
// config was built with. VerifyConnection also runs on resumed handshakes, so resumption never skips the checks.
//
// # ALPN
//
// Meshed connections must negotiate one of two protocols; a handshake that negotiates none fails:
//   - ALPNHTTP2 ("h2"): the stream carries HTTP/2. Proxies upgrade meshed HTTP/1.x and HTTP/2 to one multiplexed
//     HTTP/2 connection per peer.
//   - ALPNTransport ("trellis/1"): the stream carries one opaque TCP connection, forwarded byte for byte to the
//     destination. The version suffix leaves room for a future transport header.
package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// ALPN protocol identifiers of meshed connections (see the package documentation).
const (
	// ALPNHTTP2 marks a meshed connection carrying HTTP/2.
	ALPNHTTP2 = "h2"
	// ALPNTransport marks a meshed connection carrying one opaque TCP stream.
	ALPNTransport = "trellis/1"
)

// ServerProtocols is the ALPN list a server accepts, in preference order.
var ServerProtocols = []string{ALPNHTTP2, ALPNTransport}

// Credentials provides the workload's current certificate and trust roots. Both may change between calls; callers
// must not modify what they return. workload.Manager implements it.
type Credentials interface {
	// Certificate returns the current certificate chain and key, or nil before the first one is issued.
	Certificate() *tls.Certificate
	// Roots returns the current trust anchors, or nil before they are loaded.
	Roots() *x509.CertPool
}

// Static returns Credentials that never change; for tools and tests.
func Static(cert *tls.Certificate, roots *x509.CertPool) Credentials {
	return staticCredentials{cert: cert, roots: roots}
}

type staticCredentials struct {
	cert  *tls.Certificate
	roots *x509.CertPool
}

func (s staticCredentials) Certificate() *tls.Certificate { return s.cert }
func (s staticCredentials) Roots() *x509.CertPool         { return s.roots }

// ErrNoCertificate is returned by a handshake while the Credentials hold no certificate yet.
var ErrNoCertificate = errors.New("mtls: no workload certificate yet")

// ClientConfig returns the configuration for dialing a meshed peer whose SPIFFE ID must be server. protocols is the
// ALPN list to offer (ALPNHTTP2 and/or ALPNTransport); it defaults to ALPNTransport. The handshake fails unless the
// server's chain verifies against creds.Roots() for server authentication, its only URI SAN equals server, and it
// selects one of the offered protocols. The config can be shared by all connections to that identity.
func ClientConfig(creds Credentials, server spiffe.ID, protocols ...string) *tls.Config {
	if len(protocols) == 0 {
		protocols = []string{ALPNTransport}
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		MaxVersion:         tls.VersionTLS13,
		NextProtos:         slices.Clone(protocols),
		InsecureSkipVerify: true, // verified in VerifyConnection; see the package documentation.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := creds.Certificate(); c != nil {
				return c, nil
			}
			return nil, ErrNoCertificate
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if server.IsZero() {
				return errors.New("mtls: no expected server identity")
			}
			id, err := VerifyPeer(cs.PeerCertificates, creds.Roots(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if id != server {
				return fmt.Errorf("mtls: server identity %s is not the expected %s", id, server)
			}
			if cs.NegotiatedProtocol == "" {
				return errors.New("mtls: server selected no mesh protocol")
			}
			return nil
		},
	}
}

// ServerConfig returns the configuration for accepting meshed connections. It requires a client certificate whose
// chain verifies against creds.Roots() for client authentication and that carries exactly one SPIFFE ID; read it
// with PeerID. It negotiates one of ServerProtocols and fails the handshake if the client offers neither. The config
// can be shared by all listeners.
func ServerConfig(creds Credentials) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: slices.Clone(ServerProtocols),
		ClientAuth: tls.RequireAnyClientCert, // verified in VerifyConnection; see the package documentation.
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := creds.Certificate(); c != nil {
				return c, nil
			}
			return nil, ErrNoCertificate
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := VerifyPeer(cs.PeerCertificates, creds.Roots(), x509.ExtKeyUsageClientAuth); err != nil {
				return err
			}
			if cs.NegotiatedProtocol == "" {
				return errors.New("mtls: client offered no mesh protocol")
			}
			return nil
		},
	}
}

// PeerID returns the SPIFFE ID of the peer of a connection made with ClientConfig or ServerConfig, whose handshake
// verified it. ok is false before the handshake completes or when the peer sent no certificate. For connections made
// with other configs the ID is unverified and must not be trusted.
func PeerID(cs tls.ConnectionState) (id spiffe.ID, ok bool) {
	if !cs.HandshakeComplete || len(cs.PeerCertificates) == 0 {
		return spiffe.ID{}, false
	}
	id, err := spiffe.FromCertificate(cs.PeerCertificates[0])
	return id, err == nil
}

// VerifyPeer verifies a peer's certificate chain (leaf first, as sent in the handshake) against roots at the current
// time for the given extended key usage, and returns the leaf's SPIFFE ID. The leaf must not be a CA and must carry
// exactly one URI SAN holding a valid SPIFFE ID.
func VerifyPeer(chain []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) (spiffe.ID, error) {
	if len(chain) == 0 {
		return spiffe.ID{}, errors.New("mtls: peer sent no certificate")
	}
	if roots == nil {
		return spiffe.ID{}, errors.New("mtls: no trust roots loaded")
	}
	leaf := chain[0]
	if leaf.IsCA {
		return spiffe.ID{}, errors.New("mtls: peer certificate is a CA")
	}
	opts := x509.VerifyOptions{Roots: roots, CurrentTime: time.Now(), KeyUsages: []x509.ExtKeyUsage{usage}}
	if len(chain) > 1 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range chain[1:] {
			opts.Intermediates.AddCert(c)
		}
	}
	if _, err := leaf.Verify(opts); err != nil {
		return spiffe.ID{}, fmt.Errorf("mtls: peer certificate: %w", err)
	}
	id, err := spiffe.FromCertificate(leaf)
	if err != nil {
		return spiffe.ID{}, fmt.Errorf("mtls: peer certificate: %w", err)
	}
	return id, nil
}
