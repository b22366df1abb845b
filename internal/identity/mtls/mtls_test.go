package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	idA = spiffe.MustParse("spiffe://cluster.local/ns/shop/sa/a")
	idB = spiffe.MustParse("spiffe://cluster.local/ns/shop/sa/b")
	idC = spiffe.MustParse("spiffe://cluster.local/ns/shop/sa/c")
)

// mutableCredentials lets a test rotate the certificate and the roots between handshakes.
type mutableCredentials struct {
	cert  atomic.Pointer[tls.Certificate]
	roots atomic.Pointer[x509.CertPool]
}

func (m *mutableCredentials) Certificate() *tls.Certificate { return m.cert.Load() }
func (m *mutableCredentials) Roots() *x509.CertPool         { return m.roots.Load() }

type result struct {
	state tls.ConnectionState
	err   error
}

// handshake runs a client and a server handshake over an in-memory pipe and returns both outcomes.
func handshake(t *testing.T, client, server *tls.Config) (c, s result) {
	t.Helper()
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan result, 1)
	go func() {
		conn := tls.Server(sc, server)
		err := conn.HandshakeContext(ctx)
		if err != nil {
			sc.Close() // unblock the client
		}
		done <- result{conn.ConnectionState(), err}
	}()
	conn := tls.Client(cc, client)
	err := conn.HandshakeContext(ctx)
	if err != nil {
		cc.Close()
	} else {
		// In TLS 1.3 the server verifies the client's certificate after the client finished; read to let the
		// server's verdict arrive (an alert or the resumption ticket).
		_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var b [1]byte
		if _, rerr := conn.Read(b[:]); rerr != nil && !isTimeout(rerr) {
			err = rerr
		}
	}
	c = result{conn.ConnectionState(), err}
	s = <-done
	return c, s
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestMutualTLS(t *testing.T) {
	root := identitytest.NewRoot(t, "anchor")
	issuer := root.NewIntermediate(t, "issuer")
	roots := identitytest.Pool(root.Cert)
	foreign := identitytest.NewRoot(t, "foreign").NewIntermediate(t, "foreign issuer")
	now := time.Now()

	credsA := Static(issuer.SVID(t, idA), roots)
	credsB := Static(issuer.SVID(t, idB), roots)

	tests := []struct {
		name       string
		client     *tls.Config
		server     *tls.Config
		wantErr    string // substring of the client's or the server's error; "" means success
		wantClient spiffe.ID
		wantProto  string
	}{
		{
			name:       "both verify and see each other",
			client:     ClientConfig(credsA, idB, ALPNHTTP2),
			server:     ServerConfig(credsB),
			wantClient: idA,
			wantProto:  ALPNHTTP2,
		},
		{
			name:       "opaque transport by default",
			client:     ClientConfig(credsA, idB),
			server:     ServerConfig(credsB),
			wantClient: idA,
			wantProto:  ALPNTransport,
		},
		{
			name:    "server has another identity than expected",
			client:  ClientConfig(credsA, idC),
			server:  ServerConfig(credsB),
			wantErr: "not the expected",
		},
		{
			name:    "no expected identity",
			client:  ClientConfig(credsA, spiffe.ID{}),
			server:  ServerConfig(credsB),
			wantErr: "no expected server identity",
		},
		{
			name:    "client certificate from another trust anchor",
			client:  ClientConfig(Static(foreign.SVID(t, idA), roots), idB),
			server:  ServerConfig(credsB),
			wantErr: "unknown authority",
		},
		{
			name:    "server certificate from another trust anchor",
			client:  ClientConfig(credsA, idB),
			server:  ServerConfig(Static(foreign.SVID(t, idB), roots)),
			wantErr: "unknown authority",
		},
		{
			name:    "client has no certificate yet",
			client:  ClientConfig(Static(nil, roots), idB),
			server:  ServerConfig(credsB),
			wantErr: "no workload certificate",
		},
		{
			name: "plain client without a certificate",
			client: &tls.Config{
				InsecureSkipVerify: true, NextProtos: []string{ALPNTransport}, MinVersion: tls.VersionTLS13,
			},
			server:  ServerConfig(credsB),
			wantErr: "certificate",
		},
		{
			name: "TLS 1.2 client",
			client: func() *tls.Config {
				c := ClientConfig(credsA, idB)
				c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
				return c
			}(),
			server:  ServerConfig(credsB),
			wantErr: "version",
		},
		{
			name: "client offers no mesh protocol",
			client: &tls.Config{
				InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
				Certificates: []tls.Certificate{*credsA.Certificate()},
			},
			server:  ServerConfig(credsB),
			wantErr: "no mesh protocol",
		},
		{
			name:    "client offers only http/1.1",
			client:  ClientConfig(credsA, idB, "http/1.1"),
			server:  ServerConfig(credsB),
			wantErr: "protocol",
		},
		{
			name:    "expired client certificate",
			client:  ClientConfig(Static(issuer.SVIDValid(t, now.Add(-2*time.Hour), now.Add(-time.Hour), idA.URL()), roots), idB),
			server:  ServerConfig(credsB),
			wantErr: "expired",
		},
		{
			name:    "server certificate with two URIs",
			client:  ClientConfig(credsA, idB),
			server:  ServerConfig(Static(issuer.SVIDValid(t, now.Add(-time.Minute), now.Add(time.Hour), idB.URL(), idC.URL()), roots)),
			wantErr: "URI SANs",
		},
		{
			name:    "client certificate without a URI",
			client:  ClientConfig(Static(issuer.SVIDValid(t, now.Add(-time.Minute), now.Add(time.Hour)), roots), idB),
			server:  ServerConfig(credsB),
			wantErr: "URI SANs",
		},
		{
			name:   "server certificate with a non-SPIFFE URI",
			client: ClientConfig(credsA, idB),
			server: ServerConfig(Static(issuer.SVIDValid(t, now.Add(-time.Minute), now.Add(time.Hour),
				&url.URL{Scheme: "https", Host: "b.shop"}), roots)),
			wantErr: "invalid SPIFFE ID",
		},
		{
			name:    "client with no roots loaded",
			client:  ClientConfig(Static(credsA.Certificate(), nil), idB),
			server:  ServerConfig(credsB),
			wantErr: "no trust roots",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := handshake(t, tt.client, tt.server)
			if tt.wantErr != "" {
				if c.err == nil && s.err == nil {
					t.Fatal("handshake succeeded; want it refused")
				}
				msg := errString(c.err) + " | " + errString(s.err)
				if !strings.Contains(msg, tt.wantErr) {
					t.Fatalf("errors %q do not mention %q", msg, tt.wantErr)
				}
				return
			}
			if c.err != nil || s.err != nil {
				t.Fatalf("client error %v, server error %v", c.err, s.err)
			}
			if c.state.Version != tls.VersionTLS13 {
				t.Fatalf("version %x, want TLS 1.3", c.state.Version)
			}
			if got, ok := PeerID(s.state); !ok || got != tt.wantClient {
				t.Fatalf("server sees client %v (%v), want %v", got, ok, tt.wantClient)
			}
			if got, ok := PeerID(c.state); !ok || got != idB {
				t.Fatalf("client sees server %v (%v), want %v", got, ok, idB)
			}
			if c.state.NegotiatedProtocol != tt.wantProto || s.state.NegotiatedProtocol != tt.wantProto {
				t.Fatalf("negotiated %q/%q, want %q", c.state.NegotiatedProtocol, s.state.NegotiatedProtocol, tt.wantProto)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestRotationWithoutRebuild proves that configs built once follow the certificate and the roots the Credentials
// hold at each handshake.
func TestRotationWithoutRebuild(t *testing.T) {
	oldRoot := identitytest.NewRoot(t, "old anchor")
	newRoot := identitytest.NewRoot(t, "new anchor")
	oldIssuer, newIssuer := oldRoot.NewIntermediate(t, "old issuer"), newRoot.NewIntermediate(t, "new issuer")

	var client, server mutableCredentials
	client.cert.Store(oldIssuer.SVID(t, idA))
	client.roots.Store(identitytest.Pool(oldRoot.Cert))
	server.cert.Store(oldIssuer.SVID(t, idB))
	server.roots.Store(identitytest.Pool(oldRoot.Cert))
	ccfg, scfg := ClientConfig(&client, idB), ServerConfig(&server)

	if c, s := handshake(t, ccfg, scfg); c.err != nil || s.err != nil {
		t.Fatalf("first handshake: %v / %v", c.err, s.err)
	}

	// The server renews from the new issuer: the client does not trust the new anchor yet.
	renewed := newIssuer.SVID(t, idB)
	server.cert.Store(renewed)
	if c, _ := handshake(t, ccfg, scfg); c.err == nil {
		t.Fatal("client accepted a server certificate from an anchor missing from its bundle")
	}

	// The client's bundle now holds both anchors (as during a trust-anchor rotation): accepted, and the new
	// handshake carries the renewed certificate.
	client.roots.Store(identitytest.Pool(oldRoot.Cert, newRoot.Cert))
	server.roots.Store(identitytest.Pool(oldRoot.Cert, newRoot.Cert))
	c, s := handshake(t, ccfg, scfg)
	if c.err != nil || s.err != nil {
		t.Fatalf("handshake after bundle update: %v / %v", c.err, s.err)
	}
	if !c.state.PeerCertificates[0].Equal(renewed.Leaf) {
		t.Fatal("new handshake did not use the renewed certificate")
	}
}

func TestPeerIDBeforeHandshake(t *testing.T) {
	if _, ok := PeerID(tls.ConnectionState{}); ok {
		t.Fatal("PeerID ok on an empty state")
	}
}

func TestVerifyPeerRejectsCA(t *testing.T) {
	root := identitytest.NewRoot(t, "anchor")
	issuer := root.NewIntermediate(t, "issuer")
	if _, err := VerifyPeer([]*x509.Certificate{issuer.Cert}, identitytest.Pool(root.Cert), x509.ExtKeyUsageAny); err == nil {
		t.Fatal("a CA certificate was accepted as a workload certificate")
	}
}

func BenchmarkHandshake(b *testing.B) {
	root := identitytest.NewRoot(b, "anchor")
	issuer := root.NewIntermediate(b, "issuer")
	roots := identitytest.Pool(root.Cert)
	ccfg := ClientConfig(Static(issuer.SVID(b, idA), roots), idB)
	scfg := ServerConfig(Static(issuer.SVID(b, idB), roots))
	b.ReportAllocs()
	for b.Loop() {
		cc, sc := net.Pipe()
		errc := make(chan error, 1)
		go func() { errc <- tls.Server(sc, scfg).Handshake() }()
		if err := tls.Client(cc, ccfg).Handshake(); err != nil {
			b.Fatal(err)
		}
		cc.Close()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		sc.Close()
	}
}
