package h1

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/mtls"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixedRouter struct{ t Target }

func (r fixedRouter) Route(*Request) Target { return r.t }

// startProxy serves HTTP/1 on a loopback listener, forwarding every request to upstream.
func startProxy(t testing.TB, upstream string, mutate func(*Target)) (addr string, s *Server) {
	t.Helper()
	ap := netip.MustParseAddrPort(upstream)
	tgt := Target{Endpoint: &balance.Endpoint{Addr: ap}}
	if mutate != nil {
		mutate(&tgt)
	}
	pool := &Pool{Connector: mtls.Plain{Timeout: time.Second}}
	s = &Server{Pool: pool}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { s.ServeConn(c, bufio.NewReaderSize(c, bufferSize), fixedRouter{tgt}) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.Shutdown()
		wg.Wait()
		pool.CloseIdle()
	})
	return ln.Addr().String(), s
}

func backend(t testing.TB, h http.Handler) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func client(t testing.TB) *http.Client {
	tr := &http.Transport{ExpectContinueTimeout: 5 * time.Second, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func TestKeepAliveAndPooling(t *testing.T) {
	srv, conns := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	addr, _ := startProxy(t, srv.Listener.Addr().String(), nil)
	c := client(t)
	for i := range 20 {
		resp, err := c.Get(fmt.Sprintf("http://%s/p%d", addr, i))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != fmt.Sprintf("hello /p%d", i) {
			t.Fatalf("body %q", b)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections for 20 sequential requests, want 1 (pooled keep-alive)", n)
	}
}

// TestChunkedBodiesAndTrailers sends a chunked request with trailers and checks that the server sees body and trailers,
// and that the client gets the server's chunked response with its trailers.
func TestChunkedBodiesAndTrailers(t *testing.T) {
	srv, _ := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("X-Got-Trailer", r.Trailer.Get("X-Req-Trailer"))
		_, _ = w.Write(body)
		w.(http.Flusher).Flush()
		_, _ = w.Write([]byte("-end"))
		w.Header().Set("X-Sum", fmt.Sprint(len(body)))
	}))
	addr, _ := startProxy(t, srv.Listener.Addr().String(), nil)
	pr, pw := io.Pipe()
	go func() {
		for i := range 50 {
			fmt.Fprintf(pw, "chunk%02d;", i)
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://"+addr+"/echo", pr)
	req.Trailer = http.Header{"X-Req-Trailer": []string{"yes"}}
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if len(body) != 50*8+4 || !strings.HasSuffix(string(body), "-end") {
		t.Fatalf("body %d bytes: %q", len(body), body)
	}
	if got := resp.Trailer.Get("X-Sum"); got != "400" {
		t.Errorf("response trailer X-Sum = %q, want 400", got)
	}
	if got := resp.Header.Get("X-Got-Trailer"); got != "yes" {
		t.Errorf("server saw request trailer %q, want yes", got)
	}
	if resp.TransferEncoding == nil || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("response transfer encoding %v", resp.TransferEncoding)
	}
}

func TestExpectContinue(t *testing.T) {
	srv, _ := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Reject") != "" {
			w.WriteHeader(http.StatusExpectationFailed)
			return
		}
		b, _ := io.ReadAll(r.Body) // net/http sends 100 Continue on the first read
		fmt.Fprintf(w, "got %d", len(b))
	}))
	addr, _ := startProxy(t, srv.Listener.Addr().String(), nil)
	c := client(t)
	for _, reject := range []bool{false, true, false} {
		req, _ := http.NewRequest("PUT", "http://"+addr+"/up", strings.NewReader(strings.Repeat("x", 1000)))
		req.Header.Set("Expect", "100-continue")
		if reject {
			req.Header.Set("X-Reject", "1")
		}
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if reject {
			if resp.StatusCode != 417 {
				t.Fatalf("status %d, want 417", resp.StatusCode)
			}
			continue
		}
		if string(b) != "got 1000" {
			t.Fatalf("body %q", b)
		}
		// The client waits up to ExpectContinueTimeout (5s) for 100 Continue; getting it relayed is what makes this
		// fast.
		if time.Since(start) > 4*time.Second {
			t.Errorf("100 Continue was not relayed")
		}
	}
}

// TestUpgradeTunnel upgrades to an echo protocol, as WebSocket does, and checks bytes flow both ways afterwards.
func TestUpgradeTunnel(t *testing.T) {
	srv, _ := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" || !strings.EqualFold(r.Header.Get("Connection"), "upgrade") {
			http.Error(w, "no upgrade", 400)
			return
		}
		conn, brw, _ := w.(http.Hijacker).Hijack()
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		_, _ = io.Copy(conn, brw)
	}))
	addr, _ := startProxy(t, srv.Listener.Addr().String(), nil)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("upgrade response %v", resp)
	}
	for i := range 3 {
		msg := fmt.Sprintf("frame-%d", i)
		_, _ = conn.Write([]byte(msg))
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q, %v", buf, err)
		}
	}
}

// TestHopByHop checks RFC 9110 §7.6.1: Connection, the fields it names, Keep-Alive, Proxy-Connection, TE and Upgrade
// are not forwarded in either direction; end-to-end fields are.
func TestHopByHop(t *testing.T) {
	srv, _ := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var bad []string
		for _, h := range []string{"X-Private", "Keep-Alive", "Proxy-Connection", "Upgrade"} {
			if r.Header.Get(h) != "" {
				bad = append(bad, h)
			}
		}
		if r.Header.Get("X-End") != "1" {
			bad = append(bad, "missing X-End")
		}
		w.Header().Set("Connection", "X-Resp-Private")
		w.Header().Set("X-Resp-Private", "secret")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Resp-End", "1")
		fmt.Fprint(w, strings.Join(bad, ","))
	}))
	addr, _ := startProxy(t, srv.Listener.Addr().String(), nil)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: x\r\nConnection: X-Private, keep-alive\r\nX-Private: 1\r\n"+
		"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-End: 1\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if len(b) != 0 {
		t.Errorf("server received hop-by-hop fields: %s", b)
	}
	for _, h := range []string{"X-Resp-Private", "Keep-Alive"} {
		if resp.Header.Get(h) != "" {
			t.Errorf("client received hop-by-hop field %s", h)
		}
	}
	if resp.Header.Get("X-Resp-End") != "1" {
		t.Error("end-to-end response field dropped")
	}
}

// TestRawExchanges drives the proxy with hand-written requests and checks the raw responses.
func TestRawExchanges(t *testing.T) {
	srv, _ := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/nocontent":
			w.WriteHeader(204)
		case "/slow":
			time.Sleep(2 * time.Second)
		default:
			w.Header().Set("Content-Length", "5")
			_, _ = w.Write([]byte("hello"))
		}
	}))
	addr, _ := startProxy(t, srv.Listener.Addr().String(), func(tg *Target) { tg.Timeout = 300 * time.Millisecond })
	tests := []struct {
		name, req  string
		wantStatus int
		wantBody   string
		wantClose  bool
	}{
		{"get", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200, "hello", false},
		{"head keeps length, no body", "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", 200, "", false},
		{"204", "GET /nocontent HTTP/1.1\r\nHost: x\r\n\r\n", 204, "", false},
		{"http/1.0 closes", "GET / HTTP/1.0\r\n\r\n", 200, "hello", true},
		{"connection close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200, "hello", true},
		{"missing host", "GET / HTTP/1.1\r\n\r\n", 400, "", true},
		{"bad version", "GET / HTTP/1.7\r\nHost: x\r\n\r\n", 400, "", true},
		{"conflicting lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, "", true},
		{"unknown coding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "", true},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, "", true},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n", 400, "", true},
		{"timeout", "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", 504, "", true},
		{"huge head", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 20000) + "\r\n\r\n", 431, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = io.WriteString(conn, tt.req)
			br := bufio.NewReader(conn)
			method := strings.SplitN(tt.req, " ", 2)[0]
			resp, err := http.ReadResponse(br, &http.Request{Method: method})
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus || string(b) != tt.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, b, tt.wantStatus, tt.wantBody)
			}
			if tt.name == "head keeps length, no body" && resp.ContentLength != 5 {
				t.Errorf("HEAD content length %d", resp.ContentLength)
			}
			if resp.Close != tt.wantClose {
				t.Errorf("close = %v, want %v", resp.Close, tt.wantClose)
			}
		})
	}
}

func TestConnectFailure(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	addr, _ := startProxy(t, dead, nil)
	resp, err := client(t).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 502 || resp.Header.Get("Trellis-Proxy-Error") == "" {
		t.Fatalf("status %d, error header %q", resp.StatusCode, resp.Header.Get("Trellis-Proxy-Error"))
	}
}

// TestStaleUpstreamRetried checks that a request sent on a pooled connection the server has since closed is retried on
// a new connection rather than failed.
func TestStaleUpstreamRetried(t *testing.T) {
	srv, conns := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) }))
	addr, _ := startProxy(t, srv.Listener.Addr().String(), nil)
	c := client(t)
	get := func() {
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("got %d %q", resp.StatusCode, b)
		}
	}
	get()
	srv.CloseClientConnections() // the server drops its idle keep-alive connections
	time.Sleep(50 * time.Millisecond)
	get()
	if conns.Load() != 2 {
		t.Errorf("backend saw %d connections, want 2", conns.Load())
	}
}

// TestStreamingResponse checks that a response flushed piece by piece reaches the client piece by piece.
func TestStreamingResponse(t *testing.T) {
	release := make(chan struct{})
	srv, _ := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("first;"))
		w.(http.Flusher).Flush()
		<-release
		_, _ = w.Write([]byte("second"))
	}))
	addr, _ := startProxy(t, srv.Listener.Addr().String(), nil)
	resp, err := client(t).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first;" {
		t.Fatalf("first piece %q, %v", buf, err)
	}
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "second" {
		t.Fatalf("rest %q", rest)
	}
}

func TestLocalStatus(t *testing.T) {
	addr, _ := startProxy(t, "127.0.0.1:1", func(tg *Target) { tg.Status, tg.Reason = 503, "no endpoints" })
	resp, err := client(t).Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Trellis-Proxy-Error") != "no endpoints" {
		t.Fatalf("got %d %q", resp.StatusCode, resp.Header.Get("Trellis-Proxy-Error"))
	}
}

func TestParseChunkSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0\r\n", 0, true}, {"1a\r\n", 26, true}, {"FF;ext=1\r\n", 255, true}, {"\r\n", 0, false},
		{"zz\r\n", 0, false}, {"1234567890abcdef0\r\n", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseChunkSize([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseChunkSize(%q) = %d, %v", tt.in, got, ok)
		}
	}
}

func FuzzReadHead(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n"), true)
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, x\r\nx: 1\r\n\r\n"), false)
	f.Fuzz(func(t *testing.T, data []byte, request bool) {
		var m message
		if err := m.readHead(bufio.NewReaderSize(bytes.NewReader(data), 4096), request); err != nil {
			return
		}
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		if request {
			writeRequestHead(w, &m, nil)
		} else {
			writeResponseHead(w, &m, false, false, nil)
		}
		w.Flush()
		var m2 message
		if err := m2.readHead(bufio.NewReader(&out), request); err != nil {
			t.Fatalf("forwarded head does not parse: %v\n%q", err, out.String())
		}
		if m2.contentLength != m.contentLength || m2.chunked != m.chunked {
			t.Fatalf("framing changed when forwarded: %q", out.String())
		}
	})
}

// rawBackend answers every body-less request with a fixed 64-byte response, without net/http and without allocating,
// so benchmarks measure the proxy.
func rawBackend(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 64\r\nContent-Type: text/plain\r\n\r\n" + strings.Repeat("x", 64))
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					for { // request line and header fields up to the empty line
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
					}
					_, _ = c.Write(resp)
				}
			})
		}
	})
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// BenchmarkProxyHTTP measures one keep-alive GET through the proxy (client and backend on loopback).
func BenchmarkProxyHTTP(b *testing.B) {
	addr, _ := startProxy(b, rawBackend(b), nil)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	req := []byte("GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	br := bufio.NewReader(conn)
	want := len("HTTP/1.1 200 OK\r\nContent-Length: 64\r\nContent-Type: text/plain\r\n\r\n") + 64
	buf := make([]byte, want)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = conn.Write(req)
		if _, err := io.ReadFull(br, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// TestClientGoneIsNeutral checks that an attempt that gets no response while the client has gone away is reported
// to the balancer as Canceled, not as the endpoint's failure.
func TestClientGoneIsNeutral(t *testing.T) {
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		hole.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	outcome := make(chan balance.DoneInfo, 1)
	addr, _ := startProxy(t, hole.Addr().String(), func(tgt *Target) {
		tgt.Timeout = 300 * time.Millisecond
		tgt.Done = func(d balance.DoneInfo) { outcome <- d }
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case d := <-outcome:
		if !d.Canceled || d.Failure() {
			t.Errorf("outcome %+v, want Canceled", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no outcome reported")
	}
}
