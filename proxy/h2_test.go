package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/proxy/authz"
)

func h2cClient(t testing.TB) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestHTTP2ShutdownGoAway checks that an HTTP/2 stream in flight when shutdown starts (the server then sends GOAWAY to
// stop new streams) still completes with its body and trailers, and that shutdown ends once it has.
func TestHTTP2ShutdownGoAway(t *testing.T) {
	release, arrived := make(chan struct{}), make(chan struct{})
	ln := listen(t)
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		w.Header().Set("Trailer", "X-Done")
		_, _ = w.Write([]byte("streamed"))
		w.Header().Set("X-Done", "yes")
	})}
	backend.Protocols = new(http.Protocols)
	backend.Protocols.SetUnencryptedHTTP2(true)
	go func() { _ = backend.Serve(ln) }()
	t.Cleanup(func() { backend.Close() })
	h := newHarness(t, serviceDoc("1", []string{ln.Addr().String()}, ""))
	c := h2cClient(t)
	type result struct {
		body, trailer string
		err           error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := c.Get("http://" + h.out + "/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{body: string(b), trailer: resp.Trailer.Get("X-Done"), err: err}
	}()
	<-arrived
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
	time.Sleep(50 * time.Millisecond)
	close(release)
	r := <-res
	if r.err != nil || r.body != "streamed" || r.trailer != "yes" {
		t.Fatalf("in-flight stream: %q trailer %q, %v", r.body, r.trailer, r.err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish after the last stream")
	}
}

type denyAll struct{}

func (denyAll) Authorize(authz.Request) authz.Decision {
	return authz.Decision{Authorization: "test:deny"}
}

// TestInboundAuthorizerDenies checks the authorization seam: a denial closes TCP connections before any byte reaches
// the application.
func TestInboundAuthorizerDenies(t *testing.T) {
	h := newHarnessWith(t, serviceDoc("1", nil, ""), func(o *Options) { o.Authorizer = denyAll{} })
	app := namedBackend(t, "app")
	h.setDst(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port(app)))
	c, err := net.Dial("tcp", h.in)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	b, _ := io.ReadAll(c)
	if strings.Contains(string(b), "app") {
		t.Fatalf("denied client reached the application: %q", b)
	}
}
