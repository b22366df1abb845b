package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	idmtls "github.com/trellis-mesh/trellis/internal/identity/mtls"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/proxy/balance"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clientHello returns the first TLS record a Go client sends with the given ALPN list.
func clientHello(t testing.TB, protos ...string) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		c := tls.Client(a, &tls.Config{NextProtos: protos, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		_ = c.Handshake()
	}()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(b, buf); err != nil {
		t.Fatal(err)
	}
	n := int(buf[3])<<8 | int(buf[4])
	rec := make([]byte, 5+n)
	copy(rec, buf)
	if _, err := io.ReadFull(b, rec[5:]); err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestIsMeshHello(t *testing.T) {
	for _, tc := range []struct {
		name   string
		protos []string
		mesh   bool
	}{
		{"mesh HTTP/2", []string{ProtocolHTTP2, ProtocolTransport}, true},
		{"mesh transport", []string{ProtocolTransport}, true},
		{"application TLS offering h2", []string{"h2"}, false},
		{"application TLS offering h2 and http/1.1", []string{"h2", "http/1.1"}, false},
		{"no ALPN", nil, false},
		{"other protocol then transport", []string{"x", ProtocolTransport}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := clientHello(t, tc.protos...)
			mesh, more, _ := IsMeshHello(rec)
			if more || mesh != tc.mesh {
				t.Fatalf("IsMeshHello = %v, more %v; want %v", mesh, more, tc.mesh)
			}
			// Every strict prefix asks for more, and names the record's size.
			for _, n := range []int{0, 3, 5, len(rec) / 2, len(rec) - 1} {
				_, more, need := IsMeshHello(rec[:n])
				if !more || (n >= 5 && need != len(rec)) {
					t.Fatalf("prefix %d: more %v need %d, want more and %d", n, more, need, len(rec))
				}
			}
		})
	}
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"synthetic hello offering h2", syntheticHello("h2")},
		{"HTTP request", []byte("GET / HTTP/1.1\r\n")},
		{"alert record", []byte{0x15, 3, 3, 0, 2, 2, 40}},
		{"oversized record", []byte{0x16, 3, 1, 0x50, 0}},
		{"not a ClientHello", []byte{0x16, 3, 1, 0, 4, 2, 0, 0, 0}},
		{"truncated ClientHello body", []byte{0x16, 3, 1, 0, 6, 1, 0, 0, 40, 3, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if mesh, more, _ := IsMeshHello(tc.b); mesh || more {
				t.Fatalf("IsMeshHello = %v, more %v", mesh, more)
			}
		})
	}
}

// syntheticHello builds a minimal ClientHello record offering protos, byte for byte the same on every call (a Go
// client's carries fresh random values and key shares, which fuzzing seeds must not).
func syntheticHello(protos ...string) []byte {
	vec := func(lenBytes int, body []byte) []byte {
		out := make([]byte, lenBytes, lenBytes+len(body))
		for i, n := lenBytes-1, len(body); i >= 0; i, n = i-1, n>>8 {
			out[i] = byte(n)
		}
		return append(out, body...)
	}
	var list []byte
	for _, p := range protos {
		list = append(list, vec(1, []byte(p))...)
	}
	exts := append([]byte{0, 43}, vec(2, []byte{2, 3, 4})...) // supported_versions: TLS 1.3
	if len(protos) > 0 {
		exts = append(append(exts, 0, 16), vec(2, vec(2, list))...)
	}
	body := append([]byte{3, 3}, make([]byte, 32)...) // legacy_version, random
	body = append(body, vec(1, nil)...)               // legacy_session_id
	body = append(body, vec(2, []byte{0x13, 0x01})...)
	body = append(body, vec(1, []byte{0})...)
	body = append(body, vec(2, exts)...)
	return append([]byte{0x16, 3, 1}, vec(2, append([]byte{1}, vec(3, body)...))...)
}

func TestSyntheticHello(t *testing.T) {
	if mesh, more, _ := IsMeshHello(syntheticHello(ProtocolHTTP2, ProtocolTransport)); !mesh || more {
		t.Fatalf("synthetic mesh hello: mesh %v, more %v", mesh, more)
	}
}

func FuzzIsMeshHello(f *testing.F) {
	f.Add(syntheticHello(ProtocolHTTP2, ProtocolTransport))
	f.Add(syntheticHello("h2"))
	f.Add(syntheticHello())
	f.Add([]byte{0x16, 3, 1, 0, 1, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		mesh, more, need := IsMeshHello(b)
		if mesh && more {
			t.Fatal("mesh and more at once")
		}
		if more && (need <= len(b) && len(b) >= 5) {
			t.Fatalf("asks for %d bytes with %d in hand", need, len(b))
		}
		if mesh {
			// A decision never changes with trailing bytes.
			if m, _, _ := IsMeshHello(append(b[:len(b):len(b)], 0, 1, 2)); !m {
				t.Fatal("trailing bytes changed the decision")
			}
		}
	})
}

// pki is a trust anchor with workload credentials under it.
type pki struct {
	root *identitytest.CA
	iss  *identitytest.CA
}

func newPKI(t testing.TB, name string) *pki {
	root := identitytest.NewRoot(t, name)
	return &pki{root: root, iss: root.NewIntermediate(t, name+" issuer")}
}

// creds returns credentials for id, trusting the given roots (this PKI's when none).
func (p *pki) creds(t testing.TB, id string, trust ...*pki) Credentials {
	if len(trust) == 0 {
		trust = []*pki{p}
	}
	pool := identitytest.Pool()
	for _, tp := range trust {
		pool.AddCert(tp.root.Cert)
	}
	return idmtls.Static(p.iss.SVID(t, spiffe.MustParse(id)), pool)
}

const (
	idClient = "spiffe://cluster.local/ns/shop/sa/client"
	idServer = "spiffe://cluster.local/ns/shop/sa/server"
)

// meshServer accepts connections, terminates mesh TLS with creds and echoes "<client id> <protocol> <resumed>\n"
// followed by whatever the client sends, until it half-closes.
type meshServer struct {
	addr     string
	mu       sync.Mutex
	failures []error
}

func startServer(t testing.TB, creds Credentials) *meshServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &meshServer{addr: ln.Addr().String()}
	term := NewServer(ServerOptions{Credentials: creds, HandshakeTimeout: 5 * time.Second})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				tc, peer, err := term.Terminate(context.Background(), c)
				if err != nil {
					s.mu.Lock()
					s.failures = append(s.failures, err)
					s.mu.Unlock()
					return
				}
				defer tc.Close()
				resumed := tc.(*tls.Conn).ConnectionState().DidResume
				if _, err := io.WriteString(tc, peer.Identity+" "+peer.Protocol+" "+map[bool]string{true: "resumed", false: "full"}[resumed]+"\n"); err != nil {
					return
				}
				_, _ = io.Copy(tc, tc)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return s
}

// failuresSince returns the failures recorded after the first n.
func (s *meshServer) failuresSince(n int) []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]error(nil), s.failures[n:]...)
}

func (s *meshServer) failureCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.failures)
}

func endpoint(addr, identity string) *balance.Endpoint {
	return balance.NewEndpoint(netip.MustParseAddrPort(addr), identity, "")
}

// exchange connects, reads the server's greeting, sends a message, half-closes and returns greeting and echo.
func exchange(t testing.TB, m *Mesh, ep *balance.Endpoint, protocol string) (greeting, echo string, cs tls.ConnectionState, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tc, err := m.ConnectTLS(ctx, ep, protocol)
	if err != nil {
		return "", "", cs, err
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 0, 256)
	for !strings.Contains(string(b), "\n") {
		var chunk [256]byte
		n, err := tc.Read(chunk[:])
		if err != nil {
			return "", "", cs, err
		}
		b = append(b, chunk[:n]...)
	}
	greeting = strings.TrimSuffix(string(b), "\n")
	if _, err := io.WriteString(tc, "ping"); err != nil {
		return "", "", cs, err
	}
	if err := tc.CloseWrite(); err != nil {
		return "", "", cs, err
	}
	rest, err := io.ReadAll(tc)
	return greeting, string(rest), tc.ConnectionState(), err
}

func TestMeshConnectAndTerminate(t *testing.T) {
	mesh, other := newPKI(t, "mesh"), newPKI(t, "other")
	srv := startServer(t, mesh.creds(t, idServer))
	for _, tc := range []struct {
		name         string
		client       Credentials
		expect       string
		protocol     string
		clientReason string // "" for success
		serverReason string
	}{
		{name: "transport", client: mesh.creds(t, idClient), expect: idServer, protocol: ProtocolTransport},
		{name: "HTTP/2", client: mesh.creds(t, idClient), expect: idServer, protocol: ProtocolHTTP2},
		{name: "server is not the expected identity", client: mesh.creds(t, idClient),
			expect: "spiffe://cluster.local/ns/shop/sa/other", protocol: ProtocolTransport,
			clientReason: ReasonIdentityMismatch, serverReason: ReasonPeerRefused},
		// TLS 1.3: the client's handshake is over before the server checks its certificate; it learns of the refusal
		// from the server's alert on its first read.
		{name: "client certificate from another trust anchor", client: other.creds(t, idClient, mesh, other),
			expect: idServer, protocol: ProtocolTransport, clientReason: ReasonPeerRefused, serverReason: ReasonUntrusted},
		{name: "server certificate from another trust anchor", client: other.creds(t, idClient, other),
			expect: idServer, protocol: ProtocolTransport, clientReason: ReasonUntrusted},
		// The server sees an alert or just the connection's end, depending on timing: not checked.
		{name: "no client certificate yet", client: idmtls.Static(nil, identitytest.Pool(mesh.root.Cert)),
			expect: idServer, protocol: ProtocolTransport, clientReason: ReasonNoCertificate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := srv.failureCount()
			var observed []error
			m := NewMesh(MeshOptions{Credentials: tc.client, Observe: func(err error) { observed = append(observed, err) }})
			greeting, echo, cs, err := exchange(t, m, endpoint(srv.addr, tc.expect), tc.protocol)
			if tc.clientReason == "" {
				if err != nil {
					t.Fatal(err)
				}
				if want := idClient + " " + tc.protocol + " full"; greeting != want {
					t.Errorf("server saw %q, want %q", greeting, want)
				}
				if echo != "ping" {
					t.Errorf("echo %q", echo)
				}
				if cs.Version != tls.VersionTLS13 {
					t.Errorf("TLS version %x", cs.Version)
				}
				if len(observed) != 1 || observed[0] != nil {
					t.Errorf("observed %v", observed)
				}
				return
			}
			var he *HandshakeError
			if err == nil || (!errors.As(err, &he) && tc.clientReason != ReasonPeerRefused) {
				t.Fatalf("err = %v, want a handshake error", err)
			}
			if got := Reason(err); got != tc.clientReason {
				t.Errorf("client reason %q (%v), want %q", got, err, tc.clientReason)
			}
			if len(observed) != 1 || (observed[0] == nil) != (he == nil) {
				t.Errorf("observed %v", observed)
			}
			// Wait for the server's side of this handshake, so that it is not mistaken for the next case's.
			deadline := time.Now().Add(5 * time.Second)
			for srv.failureCount() == before && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if failures := srv.failuresSince(before); tc.serverReason != "" && (len(failures) != 1 || Reason(failures[0]) != tc.serverReason) {
				t.Errorf("server failures %v, want one %q", failures, tc.serverReason)
			}
		})
	}
}

// TestPlainWithoutIdentity checks that endpoints without an identity get plain TCP from Connect.
func TestPlainWithoutIdentity(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		done <- b
	}()
	m := NewMesh(MeshOptions{Credentials: idmtls.Static(nil, nil)})
	c, err := m.Connect(context.Background(), endpoint(ln.Addr().String(), ""))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("plain"))
	c.Close()
	if b := <-done; string(b) != "plain" {
		t.Fatalf("server read %q", b)
	}
	if _, err := m.ConnectTLS(context.Background(), endpoint(ln.Addr().String(), ""), ProtocolTransport); err == nil {
		t.Fatal("ConnectTLS without identity succeeded")
	}
}

// TestResumption checks that a second connection to a server resumes the TLS session, and that resumption still
// checks the server's identity: a ticket from a server is never used to accept another identity.
func TestResumption(t *testing.T) {
	mesh := newPKI(t, "mesh")
	srv := startServer(t, mesh.creds(t, idServer))
	m := NewMesh(MeshOptions{Credentials: mesh.creds(t, idClient)})
	ep := endpoint(srv.addr, idServer)
	for i, want := range []string{"full", "resumed", "resumed"} {
		greeting, _, cs, err := exchange(t, m, ep, ProtocolTransport)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(greeting, want) || cs.DidResume != (want == "resumed") {
			t.Fatalf("connection %d: %q, DidResume %v; want %s", i, greeting, cs.DidResume, want)
		}
	}
	// The same address now expected to be someone else: the cached session does not help an impostor.
	if _, _, _, err := exchange(t, m, endpoint(srv.addr, "spiffe://cluster.local/ns/shop/sa/x"), ProtocolTransport); Reason(err) != ReasonIdentityMismatch {
		t.Fatalf("err = %v, want identity mismatch", err)
	}
}

func TestReason(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{context.DeadlineExceeded, ReasonTimeout},
		{errors.New("mtls: server identity a is not the expected b"), ReasonIdentityMismatch},
		{errors.New("mtls: server selected no mesh protocol"), ReasonProtocol},
		{errors.New("remote error: tls: bad certificate"), ReasonPeerRefused},
		{idmtls.ErrNoCertificate, ReasonNoCertificate},
		{errors.New("boom"), ReasonOther},
	} {
		if got := Reason(tc.err); got != tc.want {
			t.Errorf("Reason(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// cpuTime returns the process's user and system CPU time so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHandshake measures opening one mesh TLS connection over loopback, with a short exchange and close: a full
// handshake (new session cache every time) and a resumed one. cpu-µs/op counts client and server.
func BenchmarkHandshake(b *testing.B) {
	mesh := newPKI(b, "mesh")
	srv := startServer(b, mesh.creds(b, idServer))
	client := mesh.creds(b, idClient)
	ep := endpoint(srv.addr, idServer)
	for _, resume := range []bool{false, true} {
		name := map[bool]string{false: "full", true: "resumed"}[resume]
		b.Run(name, func(b *testing.B) {
			m := NewMesh(MeshOptions{Credentials: client})
			b.ReportAllocs()
			cpu := cpuTime(b)
			for b.Loop() {
				if !resume {
					m = NewMesh(MeshOptions{Credentials: client})
				}
				if _, _, _, err := exchange(b, m, ep, ProtocolTransport); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime(b)-cpu)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
		})
	}
}
