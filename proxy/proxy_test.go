package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

func httpClient(t testing.TB) *http.Client {
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(t testing.TB, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestOutboundHTTPBalancesAndCounts sends requests for a service through the outbound listener and checks that they
// reach both endpoints in turn and are counted with the service's labels.
func TestOutboundHTTPBalancesAndCounts(t *testing.T) {
	a, b := namedBackend(t, "a"), namedBackend(t, "b")
	h := newHarness(t, serviceDoc("1", []string{a, b}, `"defaults": {"loadBalancer": "roundRobin"},`))
	c := httpClient(t)
	seen := map[string]int{}
	for range 10 {
		code, body := get(t, c, "http://"+h.out+"/x")
		if code != 200 {
			t.Fatalf("status %d", code)
		}
		seen[body]++
	}
	if seen["a"] != 5 || seen["b"] != 5 {
		t.Errorf("round robin sent %v", seen)
	}
	labels := map[string]string{"direction": "outbound", "dst_service": "web", "dst_namespace": "shop",
		"authority": "web.shop.svc.cluster.local:80", "tls": "false"}
	if n := h.counter("request_total", labels); n != 10 {
		t.Errorf("request_total = %v, want 10", n)
	}
	labels["status_code"], labels["classification"] = "200", "success"
	if n := h.counter("response_total", labels); n != 10 {
		t.Errorf("response_total = %v, want 10", n)
	}
	if n := h.counter("response_latency_ms", map[string]string{"dst_service": "web", "status_code": "200"}); n != 10 {
		t.Errorf("response_latency_ms count = %v, want 10", n)
	}
	if n := h.counter("protocol_detect_total", map[string]string{"direction": "outbound", "result": "http1"}); n < 1 {
		t.Errorf("detection not counted")
	}
	if n := h.counter("tcp_open_total", map[string]string{"direction": "outbound", "dst_service": "web"}); n < 1 {
		t.Errorf("tcp_open_total not counted")
	}
}

func TestNoEndpoints503(t *testing.T) {
	h := newHarness(t, serviceDoc("1", nil, ""))
	code, _ := get(t, httpClient(t), "http://"+h.out+"/")
	if code != 503 {
		t.Fatalf("status %d, want 503", code)
	}
}

// echoServer echoes until the client half-closes, then closes.
func echoServer(t testing.TB, banner string) string {
	ln := listen(t)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				if banner != "" {
					_, _ = c.Write([]byte(banner))
				}
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// TestUnknownDestinationIsTCP checks that traffic to an address the configuration does not know goes to that address
// as plain TCP, with half-close passed through.
func TestUnknownDestinationIsTCP(t *testing.T) {
	h := newHarness(t, serviceDoc("1", nil, ""))
	echo := echoServer(t, "")
	h.setDst(netip.MustParseAddrPort(echo))
	c, err := net.Dial("tcp", h.out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write([]byte("ping over tcp"))
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "ping over tcp" {
		t.Fatalf("echo %q, %v", got, err)
	}
	if n := h.counter("protocol_detect_total", map[string]string{"result": "skipped"}); n != 1 {
		t.Errorf("skipped detections = %v", n)
	}
}

// TestServerSpeaksFirst checks a protocol where the server talks first: on an opaque port it works at once; on a
// detected port it works after the detect timeout, counted as a timeout.
func TestServerSpeaksFirst(t *testing.T) {
	banner := echoServer(t, "220 hello\r\n")
	for _, opaque := range []bool{true, false} {
		t.Run(fmt.Sprintf("opaque=%v", opaque), func(t *testing.T) {
			extra := `"defaults": {"detectTimeout": "200ms"},`
			if opaque {
				extra += ` "opaquePorts": [80],`
			}
			h := newHarness(t, serviceDoc("1", []string{banner}, extra))
			c, err := net.Dial("tcp", h.out)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			start := time.Now()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || line != "220 hello\r\n" {
				t.Fatalf("banner %q, %v", line, err)
			}
			waited := time.Since(start)
			result := "skipped"
			if !opaque {
				result = "timeout"
				if waited < 150*time.Millisecond {
					t.Errorf("banner after %v, before the detect timeout", waited)
				}
			}
			if n := h.counter("protocol_detect_total", map[string]string{"result": result}); n != 1 {
				t.Errorf("%s detections = %v", result, n)
			}
		})
	}
}

// TestLoopRefused checks that a connection whose original destination is the proxy's own listener is closed.
func TestLoopRefused(t *testing.T) {
	h := newHarness(t, serviceDoc("1", nil, ""))
	h.setDst(netip.MustParseAddrPort(h.out))
	c, err := net.Dial("tcp", h.out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	if n, err := c.Read(make([]byte, 10)); err == nil {
		t.Fatalf("looping connection answered %d bytes", n)
	}
}

// TestInboundForwardsToLocalhost checks that inbound connections reach the application on localhost at the original
// port, for HTTP and TCP.
func TestInboundForwardsToLocalhost(t *testing.T) {
	h := newHarness(t, serviceDoc("1", nil, ""))
	app := namedBackend(t, "app")
	// The client dialled the pod IP (here 127.0.0.2) at the app's port.
	h.setDst(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port(app)))
	code, body := get(t, httpClient(t), "http://"+h.in+"/")
	if code != 200 || body != "app" {
		t.Fatalf("got %d %q", code, body)
	}
	if n := h.counter("request_total", map[string]string{"direction": "inbound"}); n != 1 {
		t.Errorf("inbound request_total = %v", n)
	}
}

// TestGracefulShutdown checks that a request in flight when shutdown starts completes, that the response closes the
// connection, and that new connections are refused.
func TestGracefulShutdown(t *testing.T) {
	release, arrived := make(chan struct{}), make(chan struct{})
	slow := namedBackendFunc(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		_, _ = w.Write([]byte("done"))
	})
	h := newHarness(t, serviceDoc("1", []string{slow}, ""))
	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := httpClient(t).Get("http://" + h.out + "/")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{code: resp.StatusCode, body: string(b)}
	}()
	<-arrived // the request is in flight at the backend
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.p.Shutdown(ctx)
		close(done)
	}()
	for !h.p.Draining() {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // Shutdown closes the listeners right after it starts draining
	if c, err := net.DialTimeout("tcp", h.out, time.Second); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("new connection served while draining")
		}
		c.Close()
	}
	close(release)
	r := <-res
	if r.err != nil || r.code != 200 || r.body != "done" {
		t.Fatalf("in-flight request: %d %q %v", r.code, r.body, r.err)
	}
	<-done
}

func namedBackendFunc(t testing.TB, f http.HandlerFunc) string {
	srv := newHTTPServer(t, f)
	return srv
}

func newHTTPServer(t testing.TB, h http.Handler) string {
	ln := listen(t)
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestConfigEndpoint checks /config reports the running version and hash.
func TestConfigEndpoint(t *testing.T) {
	h := newHarness(t, serviceDoc("v-42", nil, ""))
	cs := h.configStatus()
	if cs.Version != "v-42" || !strings.HasPrefix(cs.Hash, "sha256:") || cs.Hash != h.store.Load().Hash {
		t.Fatalf("/config = %+v", cs)
	}
}

// rawBackend answers every body-less request with 64 bytes, without allocating.
func rawBackend(tb testing.TB) string {
	ln := listen(tb)
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
					for {
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

// BenchmarkOutboundHTTP measures one keep-alive GET through the whole outbound path: snapshot lookup, route, picker,
// pooled upstream, metrics.
func BenchmarkOutboundHTTP(b *testing.B) {
	h := newHarness(b, serviceDoc("1", []string{rawBackend(b)}, ""))
	conn, err := net.Dial("tcp", h.out)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	req := []byte("GET /bench HTTP/1.1\r\nHost: web\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
	br := bufio.NewReader(conn)
	buf := make([]byte, len("HTTP/1.1 200 OK\r\nContent-Length: 64\r\nContent-Type: text/plain\r\n\r\n")+64)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = conn.Write(req)
		if _, err := io.ReadFull(br, buf); err != nil {
			b.Fatal(err)
		}
	}
}
