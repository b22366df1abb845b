package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	idmtls "github.com/trellis-mesh/trellis/internal/identity/mtls"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/proxy/authz"
	"github.com/trellis-mesh/trellis/proxy/mtls"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

const (
	idClient = "spiffe://cluster.local/ns/shop/sa/client"
	idWeb    = "spiffe://cluster.local/ns/shop/sa/web"
	idOther  = "spiffe://cluster.local/ns/shop/sa/other"
)

// testPKI is a trust anchor and the issuer of workload certificates under it.
type testPKI struct{ root, iss *identitytest.CA }

func newTestPKI(t testing.TB, name string) *testPKI {
	root := identitytest.NewRoot(t, name)
	return &testPKI{root: root, iss: root.NewIntermediate(t, name+" issuer")}
}

// creds returns static credentials for id issued by p, trusting the anchors of trust (p's own when none given).
func (p *testPKI) creds(t testing.TB, id string, trust ...*testPKI) mtls.Credentials {
	if len(trust) == 0 {
		trust = []*testPKI{p}
	}
	pool := x509.NewCertPool()
	for _, tp := range trust {
		pool.AddCert(tp.root.Cert)
	}
	return idmtls.Static(p.iss.SVID(t, spiffe.MustParse(id)), pool)
}

// recordingTerminator records the TLS state of every connection its Terminator accepted.
type recordingTerminator struct {
	mtls.Terminator
	mu     sync.Mutex
	states []tls.ConnectionState
}

func (r *recordingTerminator) Terminate(ctx context.Context, c net.Conn) (net.Conn, mtls.Peer, error) {
	tc, peer, err := r.Terminator.Terminate(ctx, c)
	if err == nil {
		r.mu.Lock()
		r.states = append(r.states, tc.(*tls.Conn).ConnectionState())
		r.mu.Unlock()
	}
	return tc, peer, err
}

func (r *recordingTerminator) connections() []tls.ConnectionState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]tls.ConnectionState(nil), r.states...)
}

// meshPair is a client-side proxy (a) whose services point at a server-side proxy (b), in front of applications on
// localhost. b attributes its connections to 127.0.0.2:<app port>, as if they had been redirected from the pod IP.
type meshPair struct {
	a, b *harness
	term *recordingTerminator
}

// meshOpts describe a meshPair.
type meshOpts struct {
	aCreds, bCreds mtls.Credentials
	// identity is the SPIFFE ID a's configuration expects from b. Default idWeb.
	identity string
	// services is a's services section (without the endpoint list, which is b's inbound address); default one HTTP
	// service at clusterIP.
	bExtra  string // top-level fields of b's document, each followed by a comma
	bMutate func(*Options)
	// aPlain turns a's mesh TLS off (a plaintext client proxy).
	aPlain bool
}

func newMeshPair(t testing.TB, o meshOpts) *meshPair {
	t.Helper()
	if o.identity == "" {
		o.identity = idWeb
	}
	mp := &meshPair{}
	mp.b = newMeshHarness(t, fmt.Sprintf(`{"apiVersion": "proxy.trellis.io/v1alpha1", %s "version": "b"}`, o.bExtra),
		o.bCreds, func(po *Options) {
			mp.term = &recordingTerminator{Terminator: po.Terminator}
			if po.Terminator != nil {
				po.Terminator = mp.term
			}
			if o.bMutate != nil {
				o.bMutate(po)
			}
		})
	aCreds := o.aCreds
	if o.aPlain {
		aCreds = nil
	}
	mp.a = newMeshHarness(t, meshServicesDoc("a", mp.b.in, o.identity), aCreds, nil)
	return mp
}

// meshServicesDoc routes clusterIP:80 (detected) and clusterIP:81 (opaque) to one endpoint with an identity.
func meshServicesDoc(version, endpoint, identity string) string {
	ep := fmt.Sprintf(`{"address": %q, "identity": %q}`, endpoint, identity)
	return fmt.Sprintf(`{"apiVersion": "proxy.trellis.io/v1alpha1", "version": %q, "services": [
	  {"name": "web", "namespace": "shop", "clusterIPs": ["10.96.0.1"], "port": 80,
	   "backends": [{"name": "web", "endpoints": [%s]}]},
	  {"name": "db", "namespace": "shop", "clusterIPs": ["10.96.0.1"], "port": 81, "protocol": "opaque",
	   "backends": [{"name": "db", "endpoints": [%s]}]}]}`, version, ep, ep)
}

// toApp makes b attribute its next connections to the application at app (a localhost address).
func (mp *meshPair) toApp(app string) {
	mp.b.setDst(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port(app)))
}

var opaqueIP = netip.MustParseAddrPort("10.96.0.1:81")

// echoApp answers HTTP requests with what it saw: protocol, method, host, the original-protocol header, body length
// and a request trailer; it declares a response trailer with the body length. /stream sends a first part, then
// waits for release.
func echoApp(t testing.TB, release <-chan struct{}) string {
	return newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/stream" {
			_, _ = io.WriteString(w, "first ")
			w.(http.Flusher).Flush()
			<-release
			_, _ = io.WriteString(w, "second")
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Length")
		fmt.Fprintf(w, "%s %s host=%s orig=%q len=%d trailer=%q tls=%v", r.Proto, r.Method, r.Host,
			r.Header.Get(mtls.OrigProtoHeader), len(body), r.Trailer.Get("X-Client"), r.TLS != nil)
		w.Header().Set("X-Length", strconv.Itoa(len(body)))
	}))
}

// TestMeshHTTP1 sends HTTP/1.x requests through a client proxy and a server proxy with mesh TLS between them: the
// application behind the server proxy sees HTTP/1.1 requests, the hop is TLS 1.3 with both identities verified, all
// requests share one multiplexed connection, and both proxies' metrics carry the peer's identity.
func TestMeshHTTP1(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	release := make(chan struct{})
	app := echoApp(t, release)
	mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb)})
	mp.toApp(app)
	c := httpClient(t)
	url := "http://" + mp.a.out
	requests := 0
	// do returns the response's trailer and body.
	do := func(req *http.Request) (http.Header, string) {
		t.Helper()
		requests++
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %q (%s)", req.Method, req.URL, resp.StatusCode, b, resp.Header.Get("Trellis-Proxy-Error"))
		}
		return resp.Trailer, string(b)
	}

	t.Run("GET with response trailer", func(t *testing.T) {
		req, _ := http.NewRequest("GET", url+"/echo", nil)
		req.Host = "web.shop:80"
		trailer, body := do(req)
		if want := `HTTP/1.1 GET host=web.shop:80 orig="" len=0 trailer="" tls=false`; body != want {
			t.Errorf("app saw %q, want %q", body, want)
		}
		if trailer.Get("X-Length") != "0" {
			t.Errorf("response trailer %v", trailer)
		}
	})
	t.Run("chunked upload with request trailer", func(t *testing.T) {
		req, _ := http.NewRequest("POST", url+"/echo", io.NopCloser(strings.NewReader(strings.Repeat("c", 70_000))))
		req.ContentLength = -1
		req.Trailer = http.Header{"X-Client": {"sent-last"}}
		_, body := do(req)
		if !strings.Contains(body, `POST`) || !strings.Contains(body, "len=70000") || !strings.Contains(body, `trailer="sent-last"`) {
			t.Errorf("app saw %q", body)
		}
	})
	t.Run("large fixed-length upload", func(t *testing.T) {
		req, _ := http.NewRequest("PUT", url+"/echo", strings.NewReader(strings.Repeat("l", 1<<20)))
		trailer, body := do(req)
		if !strings.Contains(body, "len=1048576") || trailer.Get("X-Length") != "1048576" {
			t.Errorf("app saw %q, trailer %v", body, trailer)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		req, _ := http.NewRequest("HEAD", url+"/echo", nil)
		if _, body := do(req); body != "" {
			t.Errorf("HEAD body %q", body)
		}
	})
	t.Run("Expect 100-continue", func(t *testing.T) {
		tr := &http.Transport{ExpectContinueTimeout: 20 * time.Second}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("POST", url+"/echo", strings.NewReader("after continue"))
		req.Header.Set("Expect", "100-continue")
		start := time.Now()
		resp, err := (&http.Client{Transport: tr, Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		requests++
		if !strings.Contains(string(b), "len=14") || time.Since(start) > 10*time.Second {
			t.Errorf("after %v: %q", time.Since(start), b)
		}
	})
	t.Run("HTTP/1.0", func(t *testing.T) {
		conn, err := net.Dial("tcp", mp.a.out)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(conn, "GET /echo HTTP/1.0\r\nHost: web\r\n\r\n")
		b, err := io.ReadAll(conn) // the proxy closes after the response
		requests++
		if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 200 OK\r\n") ||
			!strings.HasSuffix(string(b), `HTTP/1.1 GET host=web orig="" len=0 trailer="" tls=false`) {
			t.Errorf("HTTP/1.0 exchange: %q, %v", b, err)
		}
	})
	t.Run("streamed response", func(t *testing.T) {
		resp, err := c.Get(url + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		requests++
		first := make([]byte, len("first "))
		if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first " {
			t.Fatalf("first part %q, %v", first, err)
		}
		close(release) // the second part exists only now
		rest, err := io.ReadAll(resp.Body)
		if err != nil || string(rest) != "second" {
			t.Fatalf("second part %q, %v", rest, err)
		}
	})
	t.Run("concurrent requests", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for range 20 {
			requests++
			wg.Go(func() {
				resp, err := c.Get(url + "/echo")
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs <- fmt.Errorf("status %d", resp.StatusCode)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	conns := mp.term.connections()
	if len(conns) != 1 {
		t.Errorf("%d mesh connections, want one multiplexed connection", len(conns))
	}
	for _, cs := range conns {
		if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != "h2" {
			t.Errorf("mesh connection: TLS version %x, ALPN %q", cs.Version, cs.NegotiatedProtocol)
		}
	}
	in := map[string]string{"direction": "inbound", "tls": "true", "client_id": idClient}
	if n := mp.b.counter("request_total", in); n != float64(requests) {
		t.Errorf("server proxy: request_total%v = %v, want %d", in, n, requests)
	}
	out := map[string]string{"direction": "outbound", "tls": "true", "server_id": idWeb, "dst_service": "web"}
	if n := mp.a.counter("response_total", out); n != float64(requests) {
		t.Errorf("client proxy: response_total%v = %v, want %d", out, n, requests)
	}
	if n := mp.a.counter("mtls_handshake_total", map[string]string{"direction": "outbound", "result": "success"}); n != 1 {
		t.Errorf("client handshakes: %v", n)
	}
	if n := mp.b.counter("mtls_handshake_total", map[string]string{"direction": "inbound", "result": "success"}); n != 1 {
		t.Errorf("server handshakes: %v", n)
	}
}

// TestMeshHTTP2 sends h2c and gRPC through the mesh: the application receives HTTP/2.
func TestMeshHTTP2(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb)})

	t.Run("h2c", func(t *testing.T) {
		ln := listen(t)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s orig=%q", r.Proto, r.Header.Get(mtls.OrigProtoHeader))
		})}
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetUnencryptedHTTP2(true)
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { srv.Close() })
		mp.toApp(ln.Addr().String())
		req, _ := http.NewRequest("GET", "http://"+mp.a.out+"/", nil)
		req.Header.Set(mtls.OrigProtoHeader, "HTTP/1.1") // a client cannot fake the original protocol
		resp, err := h2cClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != `HTTP/2.0 orig=""` {
			t.Fatalf("app saw %q", b)
		}
	})

	t.Run("gRPC", func(t *testing.T) {
		// A new pair: one mesh connection serves one endpoint, which here is one application port.
		mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb)})
		ln := listen(t)
		gs := grpc.NewServer()
		hs := health.NewServer()
		healthpb.RegisterHealthServer(gs, hs)
		go func() { _ = gs.Serve(ln) }()
		t.Cleanup(gs.Stop)
		mp.toApp(ln.Addr().String())
		cc, err := grpc.NewClient("passthrough:///"+mp.a.out, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hc := healthpb.NewHealthClient(cc)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check = %v, %v", resp, err)
		}
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "missing"}); status.Code(err) != codes.NotFound {
			t.Fatalf("Check(missing) = %v, want NotFound relayed through trailers", err)
		}
		// Server streaming: the second update arrives on the open stream.
		w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
		if err != nil {
			t.Fatal(err)
		}
		if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
			t.Fatalf("first update %v, %v", m, err)
		}
		hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
		if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("second update %v, %v", m, err)
		}
		cancel()
		labels := map[string]string{"direction": "inbound", "tls": "true", "client_id": idClient,
			"classification": "failure"}
		if n := mp.b.counter("response_total", labels); n < 1 {
			t.Errorf("NotFound not classified as a failure on the server proxy: %v", n)
		}
	})
	for _, cs := range mp.term.connections() {
		if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != "h2" {
			t.Errorf("mesh connection: TLS version %x, ALPN %q", cs.Version, cs.NegotiatedProtocol)
		}
	}
}

// tcpEcho sends msg over a connection to addr, half-closes and returns the reply.
func tcpEcho(t testing.TB, addr, msg string) (string, error) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestMeshTCP sends opaque TCP through the mesh ("trellis/1"), with half-close, to a detected and to an opaque
// inbound port.
func TestMeshTCP(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	echo := echoServer(t, "")
	for _, opaque := range []bool{false, true} {
		t.Run(fmt.Sprintf("inbound opaque=%v", opaque), func(t *testing.T) {
			extra := ""
			if opaque {
				extra = fmt.Sprintf(`"opaquePorts": [%d],`, port(echo))
			}
			mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb), bExtra: extra})
			mp.toApp(echo)
			mp.a.setDst(opaqueIP)
			got, err := tcpEcho(t, mp.a.out, "bytes over trellis/1")
			if err != nil || got != "bytes over trellis/1" {
				t.Fatalf("echo %q, %v", got, err)
			}
			conns := mp.term.connections()
			if len(conns) != 1 || conns[0].NegotiatedProtocol != "trellis/1" || conns[0].Version != tls.VersionTLS13 {
				t.Fatalf("mesh connections %+v", conns)
			}
			waitCounter(t, mp.b, "tcp_close_total", map[string]string{"direction": "inbound", "tls": "true", "client_id": idClient}, 1)
			if n := mp.a.counter("tcp_open_total", map[string]string{"direction": "outbound", "tls": "true",
				"server_id": idWeb, "dst_service": "db"}); n != 1 {
				t.Errorf("client proxy tcp_open_total = %v", n)
			}
		})
	}
}

// waitCounter waits for a series to reach want (connections are counted when they end).
func waitCounter(t testing.TB, h *harness, name string, labels map[string]string, want float64) {
	t.Helper()
	var n float64
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if n = h.counter(name, labels); n == want {
			return
		}
	}
	t.Errorf("%s%v = %v, want %v", name, labels, n, want)
}

// TestMeshUpgrade tunnels an HTTP/1 protocol upgrade to a meshed endpoint over a "trellis/1" connection.
func TestMeshUpgrade(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	ln := listen(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
				_, _ = io.Copy(c, br)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb)})
	mp.toApp(ln.Addr().String())
	c, err := net.Dial("tcp", mp.a.out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // a 101 has no body; the tunnel is br and c
	if resp.StatusCode != 101 {
		t.Fatalf("upgrade answered %d", resp.StatusCode)
	}
	_, _ = io.WriteString(c, "tunnelled")
	got := make([]byte, len("tunnelled"))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "tunnelled" {
		t.Fatalf("tunnel echoed %q, %v", got, err)
	}
	if conns := mp.term.connections(); len(conns) != 1 || conns[0].NegotiatedProtocol != "trellis/1" {
		t.Fatalf("mesh connections %+v", conns)
	}
}

// TestMeshRefusals checks that a proxy refuses a peer whose certificate chains to another trust anchor (in both
// directions) and a server presenting another identity than the configuration expects: requests fail with 502 and a
// reason, gRPC calls with UNAVAILABLE, TCP connections are closed, the application sees nothing, and the failures
// are counted.
func TestMeshRefusals(t *testing.T) {
	mesh, other := newTestPKI(t, "mesh"), newTestPKI(t, "other")
	for _, tc := range []struct {
		name          string
		o             meshOpts
		reason        string // trellis-proxy-error
		outbound      string // client proxy handshake result
		inbound       string // server proxy handshake result; "" when the server never sees one
		serverIDLabel string
	}{
		{name: "client certificate from another trust anchor",
			o:      meshOpts{aCreds: other.creds(t, idClient, mesh, other), bCreds: mesh.creds(t, idWeb)},
			reason: "mesh tls handshake failed: peer_refused", outbound: "success", inbound: mtls.ReasonUntrusted,
			serverIDLabel: idWeb},
		{name: "server certificate from another trust anchor",
			o:      meshOpts{aCreds: mesh.creds(t, idClient), bCreds: other.creds(t, idWeb, mesh, other)},
			reason: "mesh tls handshake failed: untrusted_peer", outbound: mtls.ReasonUntrusted, inbound: mtls.ReasonPeerRefused,
			serverIDLabel: idWeb},
		{name: "server identity differs from the configuration",
			o:      meshOpts{aCreds: mesh.creds(t, idClient), bCreds: mesh.creds(t, idWeb), identity: idOther},
			reason: "mesh tls handshake failed: identity_mismatch", outbound: mtls.ReasonIdentityMismatch,
			inbound: mtls.ReasonPeerRefused, serverIDLabel: idOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reached := make(chan string, 10)
			app := namedBackendFunc(t, func(w http.ResponseWriter, r *http.Request) { reached <- r.URL.Path })
			mp := newMeshPair(t, tc.o)
			mp.toApp(app)
			resp, err := httpClient(t).Get("http://" + mp.a.out + "/refused")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 502 || resp.Header.Get("Trellis-Proxy-Error") != tc.reason {
				t.Errorf("HTTP: %d %q, want 502 %q", resp.StatusCode, resp.Header.Get("Trellis-Proxy-Error"), tc.reason)
			}
			labels := map[string]string{"direction": "outbound", "status_code": "502", "classification": "failure",
				"tls": "true", "server_id": tc.serverIDLabel}
			if n := mp.a.counter("response_total", labels); n != 1 {
				t.Errorf("response_total%v = %v", labels, n)
			}

			cc, err := grpc.NewClient("passthrough:///"+mp.a.out, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
			cancel()
			cc.Close()
			if status.Code(err) != codes.Unavailable {
				t.Errorf("gRPC: %v, want Unavailable", err)
			}

			mp.a.setDst(opaqueIP)
			if got, err := tcpEcho(t, mp.a.out, "refused bytes"); got != "" {
				t.Errorf("TCP answered %q, %v", got, err)
			}
			// A handshake the client proxy refuses is a connect failure: the request, the call and the connection are
			// each retried on further picks (here the same endpoint), and each attempt handshakes.
			attempts := 3.0
			if tc.outbound != "success" {
				attempts *= 1 + snapshot.DefaultConnectRetries
			}
			waitCounter(t, mp.a, "mtls_handshake_total", map[string]string{"direction": "outbound", "result": tc.outbound}, attempts)
			if tc.inbound != "" {
				waitCounter(t, mp.b, "mtls_handshake_total", map[string]string{"direction": "inbound", "result": tc.inbound}, attempts)
			}
			if n := mp.b.counter("mtls_handshake_total", map[string]string{"direction": "inbound", "result": "success"}); n != 0 {
				t.Errorf("server proxy accepted %v handshakes", n)
			}
			select {
			case p := <-reached:
				t.Errorf("the application was reached: %s", p)
			default:
			}
		})
	}
}

// TestDefaultPolicies checks inbound default policies for plaintext and meshed clients, over HTTP (403 with a reason)
// and TCP (closed before the application sees a byte), with the probe port always open.
func TestDefaultPolicies(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	appHTTP := namedBackend(t, "app")
	appProbe := namedBackend(t, "probe")
	echo := echoServer(t, "")
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	type want struct{ plainHTTP, plainTCP, meshHTTP, meshTCP bool }
	for _, tc := range []struct {
		policy   string
		networks []netip.Prefix
		want     want
		rule     string
		reason   string // of a plaintext HTTP denial
	}{
		{"all-unauthenticated", nil, want{true, true, true, true}, "default:all-unauthenticated", ""},
		{"all-authenticated", nil, want{false, false, true, true}, "default:all-authenticated", authz.ReasonUnauthenticated},
		{"cluster-authenticated", nil, want{false, false, true, true}, "default:cluster-authenticated", authz.ReasonOutsideNetworks},
		{"cluster-authenticated", loopback, want{true, true, true, true}, "default:cluster-authenticated", ""},
		{"deny", nil, want{false, false, false, false}, "default:deny", authz.ReasonDenied},
	} {
		t.Run(fmt.Sprintf("%s networks=%v", tc.policy, tc.networks), func(t *testing.T) {
			mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb),
				bExtra: fmt.Sprintf(`"inbound": {"defaultPolicy": %q},`, tc.policy),
				bMutate: func(o *Options) {
					o.Authorizer = authz.NewDefault(authz.DefaultOptions{ProbePorts: []uint16{port(appProbe)},
						ClusterNetworks: tc.networks})
				}})
			checkHTTP := func(what, url string, allow bool) {
				t.Helper()
				// A new connection each time: an inbound connection stays with the port it was accepted for.
				tr := &http.Transport{DisableKeepAlives: true}
				defer tr.CloseIdleConnections()
				resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case allow && (resp.StatusCode != 200 || (string(b) != "app" && string(b) != "probe")):
					t.Errorf("%s: %d %q, want allowed", what, resp.StatusCode, b)
				case !allow && resp.StatusCode != 403:
					t.Errorf("%s: %d %q, want 403", what, resp.StatusCode, b)
				case !allow && what == "plaintext HTTP" && resp.Header.Get("Trellis-Deny-Reason") != tc.rule+": "+tc.reason:
					t.Errorf("%s: deny reason %q, want %q", what, resp.Header.Get("Trellis-Deny-Reason"), tc.rule+": "+tc.reason)
				}
			}
			checkTCP := func(what, addr string, allow bool) {
				t.Helper()
				got, _ := tcpEcho(t, addr, "tcp ping")
				if allow != (got == "tcp ping") {
					t.Errorf("%s: echoed %q, want allowed=%v", what, got, allow)
				}
			}
			mp.toApp(appHTTP)
			checkHTTP("plaintext HTTP", "http://"+mp.b.in+"/", tc.want.plainHTTP)
			checkHTTP("meshed HTTP", "http://"+mp.a.out+"/", tc.want.meshHTTP)
			mp.toApp(appProbe)
			checkHTTP("plaintext probe", "http://"+mp.b.in+"/healthz", true)
			mp.toApp(echo)
			checkTCP("plaintext TCP", mp.b.in, tc.want.plainTCP)
			mp.a.setDst(opaqueIP)
			checkTCP("meshed TCP", mp.a.out, tc.want.meshTCP)

			result := "allow"
			if !tc.want.plainHTTP {
				result = "deny"
			}
			labels := map[string]string{"rule": tc.rule, "tls": "false", "client_id": ""}
			if n := mp.b.counter("inbound_http_authz_"+result+"_total", labels); n != 1 {
				t.Errorf("inbound_http_authz_%s_total%v = %v", result, labels, n)
			}
			if n := mp.b.counter("inbound_http_authz_allow_total", map[string]string{"rule": "probe"}); n != 1 {
				t.Errorf("probe allowances = %v", n)
			}
			meshResult := "allow"
			if !tc.want.meshTCP {
				meshResult = "deny"
			}
			labels = map[string]string{"rule": tc.rule, "tls": "true", "client_id": idClient}
			if n := mp.b.counter("inbound_tcp_authz_"+meshResult+"_total", labels); n != 1 {
				t.Errorf("inbound_tcp_authz_%s_total%v = %v", meshResult, labels, n)
			}
		})
	}
}

// TestAppTLSPassesThrough checks that an application's own TLS (offering h2, like gRPC over TLS) is not mistaken for
// the mesh's: from an unmeshed client it reaches the application untouched, and from a meshed client it travels
// inside mesh TLS and is unwrapped once.
func TestAppTLSPassesThrough(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app TLS %s", r.Proto)
	}))
	app.EnableHTTP2 = true
	app.StartTLS()
	t.Cleanup(app.Close)
	appAddr := app.Listener.Addr().String()
	mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb)})
	mp.toApp(appAddr)
	for _, tc := range []struct{ name, via string }{{"unmeshed client", mp.b.in}, {"meshed client", mp.a.out}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := app.Client().Transport.(*http.Transport).Clone()
			tr.DialTLSContext = nil
			tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, tc.via)
			}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(app.URL + "/")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "app TLS HTTP/2.0" {
				t.Fatalf("got %q", b)
			}
		})
	}
	if n := mp.b.counter("protocol_detect_total", map[string]string{"direction": "inbound", "result": "tls"}); n != 2 {
		t.Errorf("inbound TLS detections = %v", n)
	}
	if conns := mp.term.connections(); len(conns) != 1 || conns[0].NegotiatedProtocol != "trellis/1" {
		t.Errorf("mesh connections %+v: only the meshed client's outer TLS is terminated", conns)
	}
}

// TestMeshDisabledIgnoresIdentities checks that a proxy without mesh TLS reaches endpoints with an identity in
// plaintext, as before mesh TLS existed.
func TestMeshDisabledIgnoresIdentities(t *testing.T) {
	app := namedBackend(t, "plain")
	mp := newMeshPair(t, meshOpts{aPlain: true})
	mp.toApp(app)
	code, body := get(t, httpClient(t), "http://"+mp.a.out+"/")
	if code != 200 || body != "plain" {
		t.Fatalf("got %d %q", code, body)
	}
	if n := mp.a.counter("request_total", map[string]string{"direction": "outbound", "tls": "false", "server_id": ""}); n != 1 {
		t.Errorf("request_total{tls=false} = %v", n)
	}
}

// TestMeshGRPCInterop runs the grpc-go interop cases through a client proxy and a server proxy with mesh TLS
// between them.
func TestMeshGRPCInterop(t *testing.T) {
	client, server := tool(t, "interop-client"), tool(t, "interop-server")
	appPort := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	srv := exec.CommandContext(ctx, server, fmt.Sprintf("--port=%d", appPort))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = srv.Wait() })
	app := fmt.Sprintf("127.0.0.1:%d", appPort)
	waitListening(t, app)
	pki := newTestPKI(t, "mesh")
	mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb)})
	mp.toApp(app)
	for _, tc := range interopCases {
		t.Run(tc, func(t *testing.T) {
			cctx, ccancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer ccancel()
			out, err := exec.CommandContext(cctx, client, "--server_host=127.0.0.1",
				fmt.Sprintf("--server_port=%d", port0(mp.a.out)), "--use_tls=false", "--test_case="+tc).CombinedOutput()
			if err != nil {
				t.Fatalf("%s failed through the mesh: %v\n%s", tc, err, out)
			}
		})
	}
	if n := mp.b.counter("request_total", map[string]string{"direction": "inbound", "client_id": idClient, "tls": "true"}); n < float64(len(interopCases)) {
		t.Errorf("server proxy saw %v meshed requests for %d interop runs", n, len(interopCases))
	}
}

// TestMeshH2Spec runs h2spec against a client proxy whose endpoint is behind a server proxy with mesh TLS: the
// client-facing HTTP/2 server is the same as without mesh TLS, and so are the results.
func TestMeshH2Spec(t *testing.T) {
	h2spec := tool(t, "h2spec")
	pki := newTestPKI(t, "mesh")
	mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb)})
	mp.toApp(newH2CServer(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, _ := exec.CommandContext(ctx, h2spec, "-h", "127.0.0.1", "-p", fmt.Sprint(port0(mp.a.out)), "-o", "5").CombinedOutput()
	m := h2specResult.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no h2spec summary:\n%s", out)
	}
	t.Logf("h2spec through the mesh: %s tests, %s passed, %s skipped, %s failed", m[1], m[2], m[3], m[4])
	for _, f := range h2specFailures(string(out)) {
		if !h2specKnownFailures[f] {
			t.Errorf("unexpected h2spec failure: %s", f)
		}
	}
	if n := mp.b.counter("request_total", map[string]string{"direction": "inbound", "tls": "true"}); n == 0 {
		t.Error("no request crossed the mesh")
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

// BenchmarkMeshHop measures one keep-alive HTTP/1.1 GET from a client through a client proxy and a server proxy to a
// backend, with the proxy-to-proxy hop in plaintext (HTTP/1.1, pooled) or over mesh TLS (HTTP/2, TLS 1.3). cpu-µs/op
// is the CPU of the whole process (client, both proxies, backend) per request; the difference between the two is
// the cost of mesh TLS on the hop.
func BenchmarkMeshHop(b *testing.B) {
	pki := newTestPKI(b, "mesh")
	for _, mesh := range []bool{false, true} {
		b.Run(map[bool]string{false: "plain", true: "mtls"}[mesh], func(b *testing.B) {
			o := meshOpts{aPlain: !mesh}
			if mesh {
				o.aCreds, o.bCreds = pki.creds(b, idClient), pki.creds(b, idWeb)
			}
			backend := rawBackend(b) // first, so that it is cleaned up after the proxies that pool its connections
			mp := newMeshPair(b, o)
			mp.toApp(backend)
			conn, err := net.Dial("tcp", mp.a.out)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			req := []byte("GET /bench HTTP/1.1\r\nHost: web\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
			br := bufio.NewReader(conn)
			roundTrip := func() {
				_, _ = conn.Write(req)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			roundTrip() // connections up before measuring
			b.ReportAllocs()
			cpu := cpuTime(b)
			for b.Loop() {
				roundTrip()
			}
			b.ReportMetric(float64(cpuTime(b)-cpu)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
		})
	}
}
