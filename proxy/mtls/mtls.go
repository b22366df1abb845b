// Package mtls holds the proxy's seams for mesh TLS and their implementations: where the outbound side gets
// connections to endpoints (Connector; Mesh wraps connections to endpoints with an identity in TLS 1.3 and checks the
// server's SPIFFE ID) and where the inbound side terminates the mesh's TLS (Terminator). The TLS configurations
// themselves come from internal/identity/mtls; the workload certificate and roots from Credentials.
//
// # Mesh protocols
//
// A meshed connection negotiates one of two ALPN protocols:
//   - "h2": the connection carries HTTP/2. The outbound proxy sends every HTTP request (from HTTP/1.x or HTTP/2
//     clients) to a meshed endpoint over one multiplexed HTTP/2 connection per endpoint address and identity.
//     Requests that were HTTP/1.x at the client carry OrigProtoHeader, so that the server's proxy hands them to the
//     application as HTTP/1.1; requests without it go to the application as HTTP/2 (h2c).
//   - "trellis/1": the connection carries one opaque TCP stream, forwarded byte for byte to the destination port.
//
// Mesh clients always offer "trellis/1" (HTTP connections offer "h2" first, and the server prefers "h2"). That marks
// the ClientHello as the mesh's: an application's own TLS may well offer "h2", and must pass through untouched.
package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	idmtls "github.com/trellis-mesh/trellis/internal/identity/mtls"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/proxy/balance"
)

// ALPN protocols of meshed connections.
const (
	// ProtocolHTTP2 marks a meshed connection carrying HTTP/2.
	ProtocolHTTP2 = idmtls.ALPNHTTP2
	// ProtocolTransport marks a meshed connection carrying one opaque TCP stream; every mesh client offers it.
	ProtocolTransport = idmtls.ALPNTransport
)

// OrigProtoHeader is set by the outbound proxy on requests that an HTTP/1.x client sent, before it carries them over
// the mesh's HTTP/2; its value is the client's protocol ("HTTP/1.1" or "HTTP/1.0"). The inbound proxy removes it and
// forwards such requests to the application as HTTP/1.1. Requests without it were HTTP/2 at the client and reach the
// application as HTTP/2.
const OrigProtoHeader = "Trellis-Orig-Proto"

// Credentials provides the workload's current certificate and trust roots (workload.Manager implements it). Both
// methods are cheap and safe for concurrent use; they return the latest material after a rotation.
type Credentials interface {
	Certificate() *tls.Certificate
	Roots() *x509.CertPool
}

// Connector opens the upstream connection for one outbound request or connection.
type Connector interface {
	Connect(ctx context.Context, ep *balance.Endpoint) (net.Conn, error)
}

// TLSConnector opens mesh TLS connections negotiating a given ALPN protocol.
type TLSConnector interface {
	ConnectTLS(ctx context.Context, ep *balance.Endpoint, protocol string) (*tls.Conn, error)
}

// Plain connects over plain TCP, ignoring endpoint identities. It is the Connector when mesh TLS is disabled.
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

// DefaultHandshakeTimeout bounds a mesh TLS handshake, on either side.
const DefaultHandshakeTimeout = 5 * time.Second

// MeshOptions configure NewMesh.
type MeshOptions struct {
	// Credentials are the workload's certificate and roots. Required.
	Credentials Credentials
	// ConnectTimeout returns the bound on the TCP connect (the current configuration's connectTimeout). Default 1s.
	ConnectTimeout func() time.Duration
	// HandshakeTimeout bounds the TLS handshake after the TCP connect. Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// SessionCacheSize is the number of TLS session tickets kept per server identity, for resumption. Default 256.
	SessionCacheSize int
	// Observe, when set, is called once per handshake with its result (nil on success).
	Observe func(err error)
}

// Mesh is the mesh's Connector: endpoints without an identity get plain TCP; endpoints with one get TLS 1.3 with the
// workload's certificate, and the handshake fails unless the server presents exactly that SPIFFE ID, chained to the
// current trust roots. Connect negotiates ProtocolTransport; ConnectTLS any mesh protocol. Client configurations are
// built once per (identity, protocol) and keep a session ticket cache, so reconnecting to a server resumes its
// session (the identity checks run on resumed handshakes too) unless a certificate of that session expires within
// the handshake timeout.
type Mesh struct {
	o MeshOptions

	mu      sync.RWMutex
	configs map[configKey]*tls.Config
}

type configKey struct{ identity, protocol string }

// maxConfigs bounds the cached client configurations; past it the cache starts over.
const maxConfigs = 4096

var (
	_ Connector    = (*Mesh)(nil)
	_ TLSConnector = (*Mesh)(nil)
)

// NewMesh returns a Mesh connector.
func NewMesh(o MeshOptions) *Mesh {
	if o.ConnectTimeout == nil {
		o.ConnectTimeout = func() time.Duration { return time.Second }
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.SessionCacheSize <= 0 {
		o.SessionCacheSize = 256
	}
	return &Mesh{o: o, configs: map[configKey]*tls.Config{}}
}

// Connect dials ep: plain TCP without an identity, else mesh TLS negotiating ProtocolTransport.
func (m *Mesh) Connect(ctx context.Context, ep *balance.Endpoint) (net.Conn, error) {
	if ep.Identity == "" {
		return Plain{Timeout: m.o.ConnectTimeout()}.Connect(ctx, ep)
	}
	return m.ConnectTLS(ctx, ep, ProtocolTransport)
}

// ConnectTLS dials ep and completes a mesh TLS handshake that must negotiate protocol and in which the server must
// present ep.Identity.
func (m *Mesh) ConnectTLS(ctx context.Context, ep *balance.Endpoint, protocol string) (*tls.Conn, error) {
	if ep.Identity == "" {
		return nil, fmt.Errorf("mtls: endpoint %s has no identity", ep.HostPort)
	}
	cfg, err := m.config(ep.Identity, protocol)
	if err != nil {
		return nil, err
	}
	raw, err := Plain{Timeout: m.o.ConnectTimeout()}.Connect(ctx, ep)
	if err != nil {
		return nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, m.o.HandshakeTimeout)
	defer cancel()
	tc := tls.Client(raw, cfg)
	err = tc.HandshakeContext(hctx)
	if err == nil && tc.ConnectionState().NegotiatedProtocol != protocol {
		err = fmt.Errorf("mtls: server selected %q, not %q", tc.ConnectionState().NegotiatedProtocol, protocol)
	}
	if m.o.Observe != nil {
		m.o.Observe(err)
	}
	if err != nil {
		raw.Close()
		return nil, &HandshakeError{Endpoint: ep.HostPort, Identity: ep.Identity, Err: err}
	}
	return tc, nil
}

func (m *Mesh) config(identity, protocol string) (*tls.Config, error) {
	k := configKey{identity, protocol}
	m.mu.RLock()
	cfg := m.configs[k]
	m.mu.RUnlock()
	if cfg != nil {
		return cfg, nil
	}
	id, err := spiffe.Parse(identity)
	if err != nil {
		return nil, fmt.Errorf("mtls: endpoint identity: %w", err)
	}
	protos := []string{ProtocolTransport}
	if protocol != ProtocolTransport {
		protos = []string{protocol, ProtocolTransport}
	}
	cfg = idmtls.ClientConfig(m.o.Credentials, id, protos...)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(m.o.SessionCacheSize)
	cfg.Time = resumptionClock(m.o.HandshakeTimeout)
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.configs[k]; c != nil {
		return c, nil
	}
	if len(m.configs) >= maxConfigs {
		clear(m.configs)
	}
	m.configs[k] = cfg
	return cfg, nil
}

// HandshakeError is a failed mesh TLS handshake with an endpoint.
type HandshakeError struct {
	// Endpoint is the endpoint's address; Identity the SPIFFE ID it was expected to present.
	Endpoint, Identity string
	// Err is the TLS or verification failure.
	Err error
}

// Error describes the failure.
func (e *HandshakeError) Error() string {
	return fmt.Sprintf("mesh TLS with %s (expecting %s): %v", e.Endpoint, e.Identity, e.Err)
}

// Unwrap returns the underlying failure.
func (e *HandshakeError) Unwrap() error { return e.Err }

// Failure reasons reported by Reason (metric label values).
const (
	ReasonIdentityMismatch = "identity_mismatch"
	ReasonUntrusted        = "untrusted_peer"
	ReasonNoCertificate    = "no_certificate"
	ReasonProtocol         = "protocol"
	ReasonTimeout          = "timeout"
	ReasonPeerRefused      = "peer_refused"
	ReasonOther            = "other"
)

// Reason classifies a handshake failure for metrics and error answers: "" for nil, else one of the Reason constants.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	var (
		unknown x509.UnknownAuthorityError
		invalid x509.CertificateInvalidError
		alert   tls.AlertError
		ne      net.Error
	)
	msg := err.Error()
	switch {
	case strings.Contains(msg, "is not the expected"):
		return ReasonIdentityMismatch
	case errors.As(err, &unknown), errors.As(err, &invalid):
		return ReasonUntrusted
	case errors.Is(err, idmtls.ErrNoCertificate), strings.Contains(msg, "peer sent no certificate"):
		return ReasonNoCertificate
	case strings.Contains(msg, "mesh protocol"), strings.Contains(msg, "server selected"),
		strings.Contains(msg, "no application protocol"):
		return ReasonProtocol
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	case errors.As(err, &alert), strings.Contains(msg, "remote error"):
		return ReasonPeerRefused
	}
	return ReasonOther
}

// Peer is what the inbound side knows about the client after the handshake.
type Peer struct {
	// Identity is the client's verified SPIFFE ID; empty for a client without mesh TLS.
	Identity string
	// Protocol is the negotiated ALPN protocol: ProtocolHTTP2 or ProtocolTransport.
	Protocol string
}

// Terminator terminates the mesh's TLS on an inbound connection whose ClientHello IsMeshHello accepted. It returns
// the decrypted connection and the verified peer; on error the caller closes conn.
type Terminator interface {
	Terminate(ctx context.Context, conn net.Conn) (net.Conn, Peer, error)
}

// ServerOptions configure NewServer.
type ServerOptions struct {
	// Credentials are the workload's certificate and roots. Required.
	Credentials Credentials
	// HandshakeTimeout bounds the handshake. Default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// Observe, when set, is called once per handshake with its result (nil on success).
	Observe func(err error)
}

// Server is the mesh's Terminator: TLS 1.3, a client certificate chained to the current trust roots is required, and
// one of the mesh protocols must be negotiated (internal/identity/mtls.ServerConfig). One configuration serves every
// connection, so session tickets it issues resume on any inbound connection.
type Server struct {
	cfg     *tls.Config
	timeout time.Duration
	observe func(error)
}

var _ Terminator = (*Server)(nil)

// NewServer returns a Server.
func NewServer(o ServerOptions) *Server {
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	cfg := idmtls.ServerConfig(o.Credentials)
	cfg.Time = resumptionClock(o.HandshakeTimeout)
	return &Server{cfg: cfg, timeout: o.HandshakeTimeout, observe: o.Observe}
}

// resumptionClock is the TLS stack's clock: it runs ahead by the handshake timeout. The stack reads it only to decide
// whether a session may be resumed (its peer certificate must not have expired) and to age tickets; peer chains are
// verified against the real time by internal/identity/mtls. Running ahead makes the stack decline sessions whose
// peer certificate expires before a handshake started now must end, so a resumed handshake never fails verification
// because the certificate expired meanwhile; such sessions get a full handshake with current certificates instead.
func resumptionClock(ahead time.Duration) func() time.Time {
	return func() time.Time { return time.Now().Add(ahead) }
}

// Terminate completes the server handshake on conn and returns the TLS connection with the client's identity.
func (s *Server) Terminate(ctx context.Context, conn net.Conn) (net.Conn, Peer, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	tc := tls.Server(conn, s.cfg)
	err := tc.HandshakeContext(ctx)
	if s.observe != nil {
		s.observe(err)
	}
	if err != nil {
		return nil, Peer{}, err
	}
	cs := tc.ConnectionState()
	id, ok := idmtls.PeerID(cs)
	if !ok {
		tc.Close()
		return nil, Peer{}, errors.New("mtls: client identity unavailable")
	}
	return tc, Peer{Identity: id.String(), Protocol: cs.NegotiatedProtocol}, nil
}

// IsMeshHello reports whether b, the first bytes of a connection, hold a TLS ClientHello of a mesh client: its ALPN
// extension offers ProtocolTransport. more is true when b is a prefix of a ClientHello record and more bytes are
// needed to decide; need is then the size of the whole record (at most 5+16384). Only the first record is parsed.
func IsMeshHello(b []byte) (mesh, more bool, need int) {
	if len(b) < 5 {
		return false, true, 5
	}
	if b[0] != 0x16 || b[1] != 3 {
		return false, false, 0
	}
	n := int(b[3])<<8 | int(b[4])
	if n > 16384 {
		return false, false, 0
	}
	if len(b) < 5+n {
		return false, true, 5 + n
	}
	return slices.Contains(clientHelloALPN(b[5:5+n]), ProtocolTransport), false, 0
}

// clientHelloALPN returns the protocols of the ALPN extension of a ClientHello handshake message (RFC 8446 §4.1.2,
// RFC 7301 §3.1), or nil when the message is truncated, malformed or has none.
func clientHelloALPN(msg []byte) []string {
	r := reader(msg)
	typ, ok := r.u8()
	if !ok || typ != 1 { // client_hello
		return nil
	}
	body, ok := r.vec(3)
	if !ok {
		// A ClientHello larger than one record: the extensions are out of reach.
		return nil
	}
	r = reader(body)
	if !r.skip(2 + 32) { // legacy_version, random
		return nil
	}
	for _, lenBytes := range []int{1, 2, 1} { // legacy_session_id, cipher_suites, legacy_compression_methods
		if _, ok := r.vec(lenBytes); !ok {
			return nil
		}
	}
	exts, ok := r.vec(2)
	if !ok {
		return nil
	}
	r = reader(exts)
	for len(r) > 0 {
		typ, ok1 := r.u16()
		data, ok2 := r.vec(2)
		if !ok1 || !ok2 {
			return nil
		}
		if typ != 16 { // application_layer_protocol_negotiation
			continue
		}
		d := reader(data)
		list, ok := d.vec(2)
		if !ok || len(d) != 0 {
			return nil
		}
		var out []string
		l := reader(list)
		for len(l) > 0 {
			p, ok := l.vec(1)
			if !ok || len(p) == 0 {
				return nil
			}
			out = append(out, string(p))
		}
		return out
	}
	return nil
}

// reader reads big-endian TLS presentation-language fields.
type reader []byte

func (r *reader) u8() (uint8, bool) {
	if len(*r) < 1 {
		return 0, false
	}
	v := (*r)[0]
	*r = (*r)[1:]
	return v, true
}

func (r *reader) u16() (uint16, bool) {
	if len(*r) < 2 {
		return 0, false
	}
	v := uint16((*r)[0])<<8 | uint16((*r)[1])
	*r = (*r)[2:]
	return v, true
}

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

// vec reads a vector whose length takes lenBytes bytes.
func (r *reader) vec(lenBytes int) ([]byte, bool) {
	if len(*r) < lenBytes {
		return nil, false
	}
	n := 0
	for _, c := range (*r)[:lenBytes] {
		n = n<<8 | int(c)
	}
	*r = (*r)[lenBytes:]
	if len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}
