package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/balance/accrual"
)

// Tests of outbound traffic management with real backends on loopback sockets, through an in-process proxy:
// retries, failure accrual, the retry budget, traffic splits, timeouts, load balancing, header modifiers, circuit
// breaking. Loops are bounded by request counts and deadlines.

// countingBackend is an HTTP backend that numbers the requests it receives (from 0) and answers with handle.
type countingBackend struct {
	addr string
	hits atomic.Int64
}

func startCounting(t testing.TB, handle func(n int64, w http.ResponseWriter, r *http.Request)) *countingBackend {
	t.Helper()
	b := &countingBackend{}
	b.addr = dualBackend(t, func(w http.ResponseWriter, r *http.Request) { handle(b.hits.Add(1)-1, w, r) })
	return b
}

// dualBackend serves f over HTTP/1.1 and h2c (the proxy relays HTTP/2 clients' streams as h2c).
func dualBackend(t testing.TB, f http.HandlerFunc) string {
	t.Helper()
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := httptest.NewUnstartedServer(f)
	srv.Config.Protocols = p
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// okBackend answers 200 with its name.
func okBackend(t testing.TB, name string) *countingBackend {
	return startCounting(t, func(_ int64, w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte(name))
	})
}

// endpoints turns addresses into configuration endpoints.
func endpoints(addrs ...string) []proxyconfig.Endpoint {
	eps := make([]proxyconfig.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = proxyconfig.Endpoint{Address: a}
	}
	return eps
}

// webConfig renders a document with the service "web" at clusterIP; mutate shapes it.
func webConfig(t testing.TB, version string, mutate func(c *proxyconfig.Config, svc *proxyconfig.Service)) string {
	t.Helper()
	c := &proxyconfig.Config{APIVersion: proxyconfig.APIVersion, Version: version, Defaults: &proxyconfig.Defaults{}}
	svc := proxyconfig.Service{Name: "web", Namespace: "shop", ClusterIPs: []string{clusterIP.Addr().String()},
		Port: int32(clusterIP.Port())}
	mutate(c, &svc)
	c.Services = append(c.Services, svc)
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func i32(v int32) *int32 { return &v }

// loadResult counts the answers of a load run.
type loadResult struct {
	mu       sync.Mutex
	statuses map[int]int
	bodies   map[string]int
	reasons  map[string]int // trellis-proxy-error values
	errors   int
}

func (r *loadResult) total() int {
	n := r.errors
	for _, c := range r.statuses {
		n += c
	}
	return n
}

// load sends n requests to the outbound listener with workers keep-alive clients and counts the answers. prepare,
// when set, changes the i-th request.
func (h *harness) load(n, workers int, prepare func(i int, r *http.Request)) *loadResult {
	h.t.Helper()
	res := &loadResult{statuses: map[int]int{}, bodies: map[string]int{}, reasons: map[string]int{}}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		c := httpClient(h.t)
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				req, _ := http.NewRequest(http.MethodGet, "http://"+h.out+"/load", nil)
				if prepare != nil {
					prepare(i, req)
				}
				resp, err := c.Do(req)
				res.mu.Lock()
				if err != nil {
					res.errors++
					res.mu.Unlock()
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				res.statuses[resp.StatusCode]++
				res.bodies[string(b)]++
				if e := resp.Header.Get("Trellis-Proxy-Error"); e != "" {
					res.reasons[e]++
				}
				res.mu.Unlock()
			}
		})
	}
	wg.Wait()
	return res
}

func (h *harness) retries(result string) float64 {
	return h.counter("retry_total", map[string]string{"dst_service": "web", "result": result})
}

// accrualState returns the failure-accrual state of one of the web service's endpoints.
func (h *harness) accrualState(addr string) accrual.State {
	b := h.traffic.Accrual("shop", "web", int32(clusterIP.Port()))
	if b == nil {
		h.t.Fatal("no failure accrual for web")
	}
	st, _ := b.State(netip.MustParseAddrPort(addr))
	return st
}

func (h *harness) accrualStats() accrual.Stats {
	return h.traffic.Accrual("shop", "web", int32(clusterIP.Port())).Stats()
}

// TestRetriesMaskFlakyEndpoint sends 10,000 GETs to three endpoints, one of which answers 503 to 30 % of its
// requests. With retries on gateway errors the client sees at least 99.9 % success, and every 503 was retried once;
// without retries it sees the injected failure rate: a third of the traffic fails 30 % of the time, 10 % overall.
func TestRetriesMaskFlakyEndpoint(t *testing.T) {
	const requests = 10000
	for _, tc := range []struct {
		name  string
		retry bool
		lb    string
	}{
		{"retries on, peak-EWMA", true, ""},
		{"retries off, round robin", false, proxyconfig.LoadBalancerRoundRobin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var injected atomic.Int64
			flaky := startCounting(t, func(n int64, w http.ResponseWriter, r *http.Request) {
				if n%10 < 3 {
					injected.Add(1)
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				_, _ = w.Write([]byte("ok"))
			})
			a, b := okBackend(t, "ok"), okBackend(t, "ok")
			h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
				c.Defaults.LoadBalancer = tc.lb
				svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(flaky.addr, a.addr, b.addr)}}
				if tc.retry {
					svc.Routes = []proxyconfig.Route{{Name: "all", Retry: &proxyconfig.RetryPolicy{Attempts: i32(2),
						RetryOn: []string{"gateway-error"}}}}
				}
			}))
			start := time.Now()
			res := h.load(requests, 4, nil)
			ok := res.statuses[200]
			t.Logf("%d requests in %v: %v, flaky endpoint got %d (%d answered 503), retries attempted %v, "+
				"budget exhausted %v", res.total(), time.Since(start).Round(time.Millisecond), res.statuses,
				flaky.hits.Load(), injected.Load(), h.retries("attempted"), h.retries("budget_exhausted"))
			if res.total() != requests {
				t.Fatalf("%d answers (%d transport errors), want %d", res.total(), res.errors, requests)
			}
			if tc.retry {
				if rate := float64(ok) / requests; rate < 0.999 {
					t.Errorf("success rate %.4f with retries, want at least 0.999", rate)
				}
				if got := h.retries("attempted"); got != float64(injected.Load()) {
					t.Errorf("retries attempted %v, want one per injected 503 (%d)", got, injected.Load())
				}
				return
			}
			failed := res.statuses[503]
			if rate := float64(failed) / requests; rate < 0.09 || rate > 0.11 {
				t.Errorf("failure rate %.4f without retries, want the injected 0.30 × 1/3 = 0.10 ± 0.01", rate)
			}
			if failed != int(injected.Load()) {
				t.Errorf("client saw %d failures, the endpoint injected %d", failed, injected.Load())
			}
			if got := h.retries("attempted"); got != 0 {
				t.Errorf("%v retries without a retry policy", got)
			}
		})
	}
}

// TestDeadEndpointEjected puts a dead endpoint (connection refused) beside two live ones. Its connect failures are
// retried on the others, so the client sees no failure; after 7 consecutive failures it is ejected and only its
// probes reach it; once it listens again a probe succeeds and it is back in rotation.
func TestDeadEndpointEjected(t *testing.T) {
	a, b := okBackend(t, "a"), okBackend(t, "b")
	deadLn := listen(t)
	dead := deadLn.Addr().String()
	deadLn.Close()
	h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
		c.Defaults.FailureAccrual = &proxyconfig.FailureAccrual{MinBackoff: proxyconfig.D(300 * time.Millisecond),
			MaxBackoff: proxyconfig.D(time.Second)}
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(a.addr, b.addr, dead)}}
	}))

	// Until ejection: sequential requests, counted.
	start := time.Now()
	sent := 0
	for ; sent < 1000 && h.accrualState(dead) == accrual.Healthy; sent++ {
		if code, _ := get(t, httpClient(t), "http://"+h.out+"/"); code != 200 {
			t.Fatalf("request %d: status %d", sent, code)
		}
	}
	if st := h.accrualState(dead); st == accrual.Healthy {
		t.Fatalf("dead endpoint still healthy after %d requests", sent)
	}
	t.Logf("dead endpoint ejected after %d requests (%v)", sent, time.Since(start).Round(time.Millisecond))
	if sent > 200 {
		t.Errorf("ejection took %d requests, want it within 200 (7 consecutive failures)", sent)
	}
	if n := h.counter("failure_accrual_ejections_total", map[string]string{"dst_service": "web"}); n < 1 {
		t.Errorf("failure_accrual_ejections_total = %v", n)
	}
	if n := h.counter("failure_accrual_ejected_endpoints", map[string]string{"dst_service": "web"}); n != 1 {
		t.Errorf("failure_accrual_ejected_endpoints = %v, want 1", n)
	}

	// After ejection: the only picks of the dead endpoint are probes, each a connect failure retried elsewhere.
	before := h.accrualStats()
	retriesBefore := h.retries("attempted")
	res := h.load(10000, 4, nil)
	after := h.accrualStats()
	probes := after.Probes - before.Probes
	retried := h.retries("attempted") - retriesBefore
	t.Logf("after ejection: %v, %d probes, %v retries", res.statuses, probes, retried)
	if rate := float64(res.statuses[200]) / 10000; rate < 0.999 {
		t.Errorf("success rate %.4f after ejection, want at least 0.999", rate)
	}
	if retried != float64(probes) {
		t.Errorf("%v connect failures retried after ejection, want exactly the %d probes", retried, probes)
	}

	// Revived: a probe succeeds and the endpoint serves again.
	ln, err := net.Listen("tcp", dead)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", dead, err)
	}
	var revived atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		revived.Add(1)
		_, _ = w.Write([]byte("revived"))
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })
	c := httpClient(t)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end) && h.accrualState(dead) != accrual.Healthy; {
		get(t, c, "http://"+h.out+"/")
		time.Sleep(5 * time.Millisecond)
	}
	if st := h.accrualState(dead); st != accrual.Healthy {
		t.Fatalf("revived endpoint is %v, want healthy", st)
	}
	if n := h.accrualStats().Recoveries; n < 1 {
		t.Errorf("recoveries %d", n)
	}
	res = h.load(300, 2, nil)
	if res.statuses[200] != 300 || revived.Load() < 10 {
		t.Errorf("after recovery: %v, revived endpoint served %d", res.statuses, revived.Load())
	}
}

// blackHole accepts connections and reads requests without ever answering; it counts connections.
func blackHole(t testing.TB) (string, *atomic.Int64) {
	t.Helper()
	ln := listen(t)
	var conns atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(io.Discard, c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), &conns
}

// TestBlackHoledEndpointEjected puts an endpoint that accepts connections and never answers beside two live ones.
// Attempts on it end at the per-try timeout and are retried elsewhere; after 7 consecutive timeouts it is ejected,
// and from then on only probes reach it.
func TestBlackHoledEndpointEjected(t *testing.T) {
	a, b := okBackend(t, "a"), okBackend(t, "b")
	hole, conns := blackHole(t)
	h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(a.addr, b.addr, hole)}}
		svc.Routes = []proxyconfig.Route{{Name: "all", Timeout: proxyconfig.D(5 * time.Second),
			Retry: &proxyconfig.RetryPolicy{Attempts: i32(2), RetryOn: []string{"gateway-error"},
				PerTryTimeout: proxyconfig.D(50 * time.Millisecond)}}}
	}))
	var total loadResult
	total.statuses = map[int]int{}
	add := func(r *loadResult) {
		for k, v := range r.statuses {
			total.statuses[k] += v
		}
		total.errors += r.errors
	}
	start := time.Now()
	sent := 0
	for ; sent < 2000 && h.accrualState(hole) == accrual.Healthy; sent += 20 {
		add(h.load(20, 4, nil))
	}
	if h.accrualState(hole) == accrual.Healthy {
		t.Fatalf("black hole still healthy after %d requests", sent)
	}
	t.Logf("black hole ejected after %d requests, %d connections to it (%v)", sent, conns.Load(),
		time.Since(start).Round(time.Millisecond))
	if n := conns.Load(); n > 7+4 {
		t.Errorf("%d attempts reached the black hole before its ejection, want the 7 consecutive failures (plus "+
			"those already picked by the other client workers)", n)
	}
	before, hitsBefore := h.accrualStats(), conns.Load()
	add(h.load(5000, 4, nil))
	after, hitsAfter := h.accrualStats(), conns.Load()
	probes := int64(after.Probes - before.Probes)
	t.Logf("after ejection: %d connections to the black hole, %d probes", hitsAfter-hitsBefore, probes)
	// Requests picked before the ejection may still connect after it: at most one per client worker.
	if hits := hitsAfter - hitsBefore; hits > probes+4 {
		t.Errorf("%d connections reached the ejected black hole, %d probes", hits, probes)
	}
	n := total.total()
	if rate := float64(total.statuses[200]) / float64(n); rate < 0.999 {
		t.Errorf("success rate %.4f over %d requests (%v), want at least 0.999", rate, n, total.statuses)
	}
}

// TestRetryBudgetBoundsRetries sends requests for 3 s to a service whose every endpoint fails, with a retry policy
// allowing 3 retries per request. The retry budget (ratio 0.2, 10 per second over a 1 s window) caps the retries at
// 0.2 × requests + 10 per second, so an outage is not amplified.
func TestRetryBudgetBoundsRetries(t *testing.T) {
	fail := func(_ int64, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusInternalServerError) }
	x, y := startCounting(t, fail), startCounting(t, fail)
	ratio, perSecond, ttl := 0.2, int32(10), time.Second
	h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
		c.Defaults.RetryBudget = &proxyconfig.RetryBudget{Ratio: &ratio, MinRetriesPerSecond: &perSecond,
			TTL: proxyconfig.D(ttl)}
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(x.addr, y.addr)}}
		svc.Routes = []proxyconfig.Route{{Name: "all", Retry: &proxyconfig.RetryPolicy{Attempts: i32(3),
			RetryOn: []string{"5xx"}, Backoff: &proxyconfig.RetryBackoff{Base: proxyconfig.D(time.Millisecond),
				Max: proxyconfig.D(time.Millisecond)}}}}
	}))
	const duration = 3 * time.Second
	var requests atomic.Int64
	stop := time.Now().Add(duration)
	var wg sync.WaitGroup
	for range 4 {
		c := httpClient(t)
		wg.Go(func() {
			for time.Now().Before(stop) && requests.Load() < 100000 {
				resp, err := c.Get("http://" + h.out + "/")
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 500 {
					t.Errorf("status %d, want the endpoints' 500", resp.StatusCode)
				}
				requests.Add(1)
			}
		})
	}
	wg.Wait()
	n := float64(requests.Load())
	retried, refused := h.retries("attempted"), h.retries("budget_exhausted")
	// The reserve is a window's worth (10 × 1 s) and the window slides in tenths: allow one extra window, and a
	// little slack.
	bound := ratio*n + float64(perSecond)*(duration+ttl).Seconds() + 20
	t.Logf("%v requests, %v retries (bound %.0f), %v refused by the budget, backend hits %d", n, retried, bound,
		refused, x.hits.Load()+y.hits.Load())
	if retried > bound {
		t.Errorf("%v retries, more than the budget's %.0f", retried, bound)
	}
	if retried < ratio*n/2 || refused == 0 {
		t.Errorf("retried %v and refused %v: the budget should have been spent and then refused retries", retried,
			refused)
	}
	if hits := x.hits.Load() + y.hits.Load(); float64(hits) != n+retried {
		t.Errorf("endpoints saw %d requests, want %v originals + %v retries", hits, n, retried)
	}
}

// TestTrafficSplit checks weighted backends (90/10 over 10,000 requests), a drained backend (weight 0), a header
// match that sends only matching requests to a backend, and an unresolved backend whose share gets 500 with the
// reason.
func TestTrafficSplit(t *testing.T) {
	stable, canary, drained := okBackend(t, "stable"), okBackend(t, "canary"), okBackend(t, "drained")
	const reason = "TrafficSplit shop/web names Service web-missing, which does not exist"
	h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Backends = []proxyconfig.Backend{
			{Name: "stable", Weight: i32(90), Endpoints: endpoints(stable.addr)},
			{Name: "canary", Weight: i32(10), Endpoints: endpoints(canary.addr)},
			{Name: "drained", Weight: i32(0), Endpoints: endpoints(drained.addr)},
			{Name: "missing", Weight: i32(0), Unresolved: reason},
		}
		svc.Routes = []proxyconfig.Route{
			{Name: "beta-users", Matches: []proxyconfig.Match{{Headers: []proxyconfig.HeaderMatch{
				{Name: "x-user-group", Value: "beta"}}}}, Backends: []proxyconfig.BackendRef{{Name: "canary"}}},
			{Name: "broken", Matches: []proxyconfig.Match{{Path: &proxyconfig.PathMatch{Value: "/broken"}}},
				Backends: []proxyconfig.BackendRef{{Name: "stable", Weight: i32(3)}, {Name: "missing", Weight: i32(1)}}},
		}
	}))
	const requests = 10000
	res := h.load(requests, 4, nil)
	share := float64(res.bodies["canary"]) / requests
	t.Logf("split: %v", res.bodies)
	if share < 0.08 || share > 0.12 {
		t.Errorf("canary share %.4f, want 0.10 ± 0.02", share)
	}
	if res.bodies["stable"]+res.bodies["canary"] != requests || drained.hits.Load() != 0 {
		t.Errorf("answers %v, drained backend hits %d", res.bodies, drained.hits.Load())
	}

	canaryBefore, stableBefore := canary.hits.Load(), stable.hits.Load()
	res = h.load(500, 2, func(i int, r *http.Request) {
		if i%2 == 0 {
			r.Header.Set("X-User-Group", "beta")
		}
	})
	if res.statuses[200] != 500 {
		t.Fatalf("header match: %v", res.statuses)
	}
	// Every beta request went to the canary; the others split 90/10.
	beta, others := canary.hits.Load()-canaryBefore, stable.hits.Load()-stableBefore
	if beta < 250 || others < 200 || beta+others != 500 {
		t.Errorf("beta requests: canary got %d, stable %d of 500 (250 marked)", beta, others)
	}

	res = h.load(2000, 2, func(_ int, r *http.Request) { r.URL.Path = "/broken" })
	broken := res.statuses[500]
	t.Logf("route with an unresolved leg: %v, reasons %v", res.statuses, res.reasons)
	if f := float64(broken) / 2000; f < 0.20 || f > 0.30 || res.reasons[reason] != broken {
		t.Errorf("%d of 2000 got 500 (reasons %v), want 25 %% ± 5 with %q", broken, res.reasons, reason)
	}
	if n := h.counter("response_total", map[string]string{"route": "broken", "status_code": "500"}); int(n) != broken {
		t.Errorf("response_total{route=broken,status_code=500} = %v, want %d", n, broken)
	}
}

// TestDirectResponse checks a route the proxy answers itself, as the catch-all the reconciler renders after a
// Service's HTTPRoute rules: requests the rule matches reach the backend, the others get 404 with the reason and never
// leave the proxy; a gRPC call gets UNIMPLEMENTED.
func TestDirectResponse(t *testing.T) {
	backend := okBackend(t, "web")
	const reason = "no HTTPRoute rule of Service shop/web port 80 matches the request"
	h := newHarness(t, webConfig(t, "1", func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(backend.addr)}}
		svc.Routes = []proxyconfig.Route{
			{Name: "api", Matches: []proxyconfig.Match{{Path: &proxyconfig.PathMatch{Type: "PathPrefix", Value: "/load"}}},
				Backends: []proxyconfig.BackendRef{{Name: "web"}}},
			{Name: "unmatched", DirectResponse: &proxyconfig.DirectResponse{Status: 404, Reason: reason}},
		}
	}))
	res := h.load(200, 2, func(i int, r *http.Request) {
		if i%2 == 1 {
			r.URL.Path = "/elsewhere"
		}
	})
	t.Logf("statuses %v, reasons %v, backend hits %d", res.statuses, res.reasons, backend.hits.Load())
	if res.statuses[200] != 100 || res.statuses[404] != 100 || res.reasons[reason] != 100 {
		t.Errorf("statuses %v, reasons %v; want 100 answered 200 and 100 answered 404 with %q", res.statuses, res.reasons, reason)
	}
	if n := h.counter("response_total", map[string]string{"route": "unmatched", "status_code": "404"}); n != 100 {
		t.Errorf("response_total{route=unmatched,status_code=404} = %v, want 100", n)
	}
	if hits := backend.hits.Load(); hits != 100 {
		t.Errorf("the backend got %d requests, want the 100 the route matches", hits)
	}
	// The health check's path matches no rule either.
	code, msg := grpcCheck(t, h.out, 5*time.Second)
	if code != codes.Unimplemented || msg != reason {
		t.Errorf("gRPC status %v %q, want UNIMPLEMENTED with %q", code, msg, reason)
	}
}

// TestRequestTimeouts checks that a request the proxy times out gets 504 with a trellis-proxy-error saying so, for
// HTTP/1 and HTTP/2, and that a per-try timeout retries on another endpoint, which answers.
func TestRequestTimeouts(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	slow := startCounting(t, func(_ int64, w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		_, _ = w.Write([]byte("slow"))
	})
	fast := okBackend(t, "fast")

	t.Run("request timeout", func(t *testing.T) {
		h := newHarness(t, webConfig(t, "1", func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
			svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(slow.addr)}}
			svc.Routes = []proxyconfig.Route{{Name: "all", Timeout: proxyconfig.D(150 * time.Millisecond)}}
		}))
		for _, c := range []*http.Client{httpClient(t), h2cClient(t)} {
			start := time.Now()
			resp, err := c.Get("http://" + h.out + "/slow")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			took := time.Since(start)
			want := "request timed out after 150ms"
			if resp.StatusCode != 504 || resp.Header.Get("Trellis-Proxy-Error") != want {
				t.Errorf("%s: %d %q, want 504 %q", resp.Proto, resp.StatusCode, resp.Header.Get("Trellis-Proxy-Error"),
					want)
			}
			if took > 3*time.Second {
				t.Errorf("%s: answered after %v", resp.Proto, took)
			}
		}
	})

	t.Run("per-try timeout retried", func(t *testing.T) {
		h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
			c.Defaults.LoadBalancer = proxyconfig.LoadBalancerRoundRobin
			svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(slow.addr, fast.addr)}}
			svc.Routes = []proxyconfig.Route{{Name: "all", Timeout: proxyconfig.D(3 * time.Second),
				Retry: &proxyconfig.RetryPolicy{Attempts: i32(1), RetryOn: []string{"gateway-error"},
					PerTryTimeout: proxyconfig.D(100 * time.Millisecond)}}}
		}))
		for _, c := range []*http.Client{httpClient(t), h2cClient(t)} {
			for i := range 6 {
				start := time.Now()
				code, body := get(t, c, "http://"+h.out+"/")
				if code != 200 || body != "fast" || time.Since(start) > 2*time.Second {
					t.Errorf("request %d: %d %q after %v, want the fast endpoint's answer", i, code, body,
						time.Since(start))
				}
			}
		}
		if n := h.retries("attempted"); n < 2 {
			t.Errorf("%v retries after per-try timeouts", n)
		}
	})
}

// TestEWMAAvoidsSlowEndpoint checks that peak-EWMA sends a slow endpoint (50 ms, above the 30 ms initial estimate)
// a small share of the traffic next to two fast ones, where round robin would send it a third.
func TestEWMAAvoidsSlowEndpoint(t *testing.T) {
	slow := startCounting(t, func(_ int64, w http.ResponseWriter, _ *http.Request) {
		time.Sleep(50 * time.Millisecond)
		_, _ = w.Write([]byte("slow"))
	})
	a, b := okBackend(t, "fast"), okBackend(t, "fast")
	h := newHarness(t, webConfig(t, "1", func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(slow.addr, a.addr, b.addr)}}
	}))
	const requests = 1500
	res := h.load(requests, 4, nil)
	share := float64(slow.hits.Load()) / requests
	t.Logf("slow endpoint share %.4f (%d of %d), fast %d + %d", share, slow.hits.Load(), requests, a.hits.Load(),
		b.hits.Load())
	if res.statuses[200] != requests {
		t.Fatalf("answers %v", res.statuses)
	}
	if share > 0.05 {
		t.Errorf("slow endpoint got %.4f of the requests, want at most 0.05", share)
	}
}

// TestHeaderModifiers checks a route's request and response header modifiers (remove, then set, then add) for
// HTTP/1 and HTTP/2 clients.
func TestHeaderModifiers(t *testing.T) {
	echo := dualBackend(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Internal", "secret")
		w.Header().Set("X-Version", "v1")
		_ = json.NewEncoder(w).Encode(r.Header)
	})
	h := newHarness(t, webConfig(t, "1", func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(echo)}}
		svc.Routes = []proxyconfig.Route{{Name: "all",
			RequestHeaders: &proxyconfig.HeaderModifier{
				Set:    []proxyconfig.HeaderValue{{Name: "x-env", Value: "prod"}},
				Add:    []proxyconfig.HeaderValue{{Name: "x-trace", Value: "proxy"}},
				Remove: []string{"X-Debug"}},
			ResponseHeaders: &proxyconfig.HeaderModifier{
				Set:    []proxyconfig.HeaderValue{{Name: "x-version", Value: "routed"}},
				Remove: []string{"x-internal"}},
		}}
	}))
	for _, c := range []*http.Client{httpClient(t), h2cClient(t)} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+h.out+"/", nil)
		req.Header.Set("X-Env", "dev")
		req.Header.Add("X-Trace", "app")
		req.Header.Set("X-Debug", "1")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got http.Header
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if v := got.Values("X-Env"); len(v) != 1 || v[0] != "prod" {
			t.Errorf("%s: backend saw X-Env %q, want [prod]", resp.Proto, v)
		}
		if v := strings.Join(got.Values("X-Trace"), ","); v != "app,proxy" {
			t.Errorf("%s: backend saw X-Trace %q, want app,proxy", resp.Proto, v)
		}
		if v := got.Values("X-Debug"); len(v) != 0 {
			t.Errorf("%s: backend saw X-Debug %q", resp.Proto, v)
		}
		if resp.Header.Get("X-Internal") != "" || resp.Header.Get("X-Version") != "routed" {
			t.Errorf("%s: response headers %v", resp.Proto, resp.Header)
		}
	}
}

// TestRetryReplaysBody checks that a POST on a route allowing non-idempotent retries is replayed with its body (fixed
// length and chunked, HTTP/1 and HTTP/2) after a 503, and that a body longer than maxBodyBytes is not retried.
func TestRetryReplaysBody(t *testing.T) {
	refuse := startCounting(t, func(_ int64, w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	echo := startCounting(t, func(_ int64, w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body) // HTTP/1: read the whole body before answering
		_, _ = w.Write(b)
	})
	h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
		c.Defaults.LoadBalancer = proxyconfig.LoadBalancerRoundRobin
		c.Defaults.FailureAccrual = &proxyconfig.FailureAccrual{ConsecutiveFailures: i32(1000)}
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(refuse.addr, echo.addr)}}
		svc.Routes = []proxyconfig.Route{{Name: "all", Retry: &proxyconfig.RetryPolicy{Attempts: i32(1),
			RetryOn: []string{"5xx"}, NonIdempotent: true, MaxBodyBytes: i32(4096)}}}
	}))
	small := bytes.Repeat([]byte("0123456789abcdef"), 200) // 3200 bytes
	large := bytes.Repeat([]byte("x"), 10000)
	for _, c := range []*http.Client{httpClient(t), h2cClient(t)} {
		for _, tc := range []struct {
			name    string
			body    []byte
			chunked bool
			want    int
		}{
			{"fixed length", small, false, 200},
			{"chunked", small, true, 200},
			{"too long", large, false, 503},
			{"too long, chunked", large, true, 503},
		} {
			// Two requests: round robin sends one of them to the refusing endpoint first.
			for i := range 2 {
				var body io.Reader = bytes.NewReader(tc.body)
				if tc.chunked {
					body = io.MultiReader(body) // unknown length: chunked (HTTP/1) or no content-length (HTTP/2)
				}
				resp, err := c.Post("http://"+h.out+"/upload", "application/octet-stream", body)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == 200 && !bytes.Equal(got, tc.body):
					t.Errorf("%s %s #%d: echoed %d bytes, want the %d sent", resp.Proto, tc.name, i, len(got),
						len(tc.body))
				case resp.StatusCode != 200 && (tc.want == 200 || resp.StatusCode != 503):
					t.Errorf("%s %s #%d: status %d", resp.Proto, tc.name, i, resp.StatusCode)
				}
			}
		}
	}
	if n := h.retries("not_retryable"); n < 4 {
		t.Errorf("not_retryable = %v, want the long bodies' 503s counted", n)
	}
}

// TestCircuitBreaking checks maxRequests with no waiting room (a second concurrent request gets 503 at once) and
// maxConnections for opaque TCP (a second connection is closed).
func TestCircuitBreaking(t *testing.T) {
	hold := make(chan struct{})
	entered := make(chan struct{}, 1)
	blocking := startCounting(t, func(_ int64, w http.ResponseWriter, _ *http.Request) {
		entered <- struct{}{}
		<-hold
		_, _ = w.Write([]byte("done"))
	})
	echo := echoServer(t, "")
	h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(blocking.addr)}}
		svc.MaxRequests, svc.MaxPendingRequests = i32(1), i32(0)
		c.Services = append(c.Services, proxyconfig.Service{Name: "db", Namespace: "shop",
			ClusterIPs: []string{opaqueIP.Addr().String()}, Port: int32(opaqueIP.Port()),
			Protocol: proxyconfig.ProtocolOpaque, MaxConnections: i32(1),
			Backends: []proxyconfig.Backend{{Name: "db", Endpoints: endpoints(echo)}}})
	}))
	first := make(chan int, 1)
	go func() {
		code, _ := get(t, httpClient(t), "http://"+h.out+"/first")
		first <- code
	}()
	<-entered
	resp, err := httpClient(t).Get("http://" + h.out + "/second")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(resp.Header.Get("Trellis-Proxy-Error"), "circuit breaker") {
		t.Errorf("second request: %d %q, want 503 from the circuit breaker", resp.StatusCode,
			resp.Header.Get("Trellis-Proxy-Error"))
	}
	close(hold)
	if code := <-first; code != 200 {
		t.Errorf("first request: %d", code)
	}
	if n := h.counter("circuit_breaker_rejected_total", map[string]string{"dst_service": "web",
		"limit": "maxPendingRequests"}); n != 1 {
		t.Errorf("circuit_breaker_rejected_total = %v, want 1", n)
	}

	h.setDst(opaqueIP)
	c1, err := net.Dial("tcp", h.out)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	_ = c1.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c1.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(c1, buf); err != nil || string(buf) != "one" {
		t.Fatalf("first connection: %q %v", buf, err)
	}
	if got, err := tcpEcho(t, h.out, "two"); got != "" {
		t.Errorf("second connection answered %q, %v; want it closed", got, err)
	}
	if n := h.counter("circuit_breaker_rejected_total", map[string]string{"dst_service": "db",
		"limit": "maxConnections"}); n != 1 {
		t.Errorf("circuit_breaker_rejected_total{db, maxConnections} = %v, want 1", n)
	}
}

// TestTCPConnectRetried checks that an opaque connection whose first pick refuses is relayed to another endpoint.
func TestTCPConnectRetried(t *testing.T) {
	echo := echoServer(t, "")
	deadLn := listen(t)
	dead := deadLn.Addr().String()
	deadLn.Close()
	h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
		c.Defaults.LoadBalancer = proxyconfig.LoadBalancerRoundRobin
		svc.Protocol = proxyconfig.ProtocolOpaque
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(dead, echo)}}
	}))
	for i := range 6 {
		got, err := tcpEcho(t, h.out, fmt.Sprint("hello ", i))
		if got != fmt.Sprint("hello ", i) {
			t.Fatalf("connection %d: %q %v", i, got, err)
		}
	}
	// Round robin alternates and each retry takes the next turn: every connection's first pick is the dead endpoint.
	if n := h.retries("attempted"); n != 6 {
		t.Errorf("%v connect retries, want 6", n)
	}
	if n := h.counter("failure_accrual_ejections_total", map[string]string{"dst_service": "web"}); n != 0 {
		t.Errorf("%v ejections after 6 consecutive failures", n)
	}
}

// TestGRPCDeadlineExceeded checks that a gRPC call the proxy times out ends with DEADLINE_EXCEEDED and the proxy's
// reason, as a grpc-go client sees it.
func TestGRPCDeadlineExceeded(t *testing.T) {
	addr := slowGRPCServer(t, 2*time.Second)
	h := newHarness(t, webConfig(t, "1", func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(addr)}}
		svc.Routes = []proxyconfig.Route{{Name: "all", Timeout: proxyconfig.D(200 * time.Millisecond)}}
	}))
	code, msg := grpcCheck(t, h.out, 5*time.Second)
	if code != 4 || !strings.Contains(msg, "request timed out after 200ms") {
		t.Errorf("gRPC status %d %q, want DEADLINE_EXCEEDED (4) from the proxy", code, msg)
	}
}

// slowHealth is a gRPC health server whose Check answers after a delay.
type slowHealth struct {
	healthpb.UnimplementedHealthServer
	delay time.Duration
}

func (s slowHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// slowGRPCServer serves the health service with Check answering after delay (h2c), and returns its address.
func slowGRPCServer(t testing.TB, delay time.Duration) string {
	t.Helper()
	ln := listen(t)
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, slowHealth{delay: delay})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	return ln.Addr().String()
}

// grpcCheck calls the health service's Check through addr with a client deadline and returns the status code and
// message.
func grpcCheck(t testing.TB, addr string, deadline time.Duration) (codes.Code, string) {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	st := status.Convert(err)
	return st.Code(), st.Message()
}

// unavailableHealth fails every Check with UNAVAILABLE (a trailers-only response).
type unavailableHealth struct {
	healthpb.UnimplementedHealthServer
	calls *atomic.Int64
}

func (s unavailableHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	s.calls.Add(1)
	return nil, status.Error(codes.Unavailable, "overloaded")
}

// TestGRPCRetriedOnUnavailable checks that a gRPC call answered UNAVAILABLE by one endpoint is retried on another
// when the route lists "unavailable", and not retried when it does not.
func TestGRPCRetriedOnUnavailable(t *testing.T) {
	ln := listen(t)
	var failed atomic.Int64
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, unavailableHealth{calls: &failed})
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-done })
	good := slowGRPCServer(t, 0)
	for _, tc := range []struct {
		name    string
		retryOn []string
		want    codes.Code
	}{
		{"listed", []string{"unavailable"}, codes.OK},
		{"not listed", []string{"5xx"}, codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
				c.Defaults.LoadBalancer = proxyconfig.LoadBalancerRoundRobin
				svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(ln.Addr().String(), good)}}
				svc.Routes = []proxyconfig.Route{{Name: "all", Retry: &proxyconfig.RetryPolicy{Attempts: i32(1),
					RetryOn: tc.retryOn}}}
			}))
			before := failed.Load()
			for i := range 4 {
				code, msg := grpcCheck(t, h.out, 5*time.Second)
				if code != tc.want && (tc.want == codes.OK || code != codes.OK) {
					t.Errorf("call %d: %v %q, want %v", i, code, msg, tc.want)
				}
			}
			if failed.Load() == before {
				t.Error("the failing endpoint was never tried")
			}
			if tc.want == codes.OK && h.retries("attempted") != float64(failed.Load()-before) {
				t.Errorf("%v retries, %d UNAVAILABLE answers", h.retries("attempted"), failed.Load()-before)
			}
		})
	}
}

// rawBodyBackend answers every request with a fixed 64-byte response after reading its head and its Content-Length
// body, without net/http and without allocating, so benchmarks measure the proxy.
func rawBodyBackend(tb testing.TB) string {
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
					length := 0
					for { // request line and header fields up to the empty line
						line, err := br.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(line) <= 2 {
							break
						}
						if len(line) > 15 && bytes.EqualFold(line[:15], []byte("content-length:")) {
							length = 0
							for _, c := range bytes.TrimSpace(line[15:]) {
								length = length*10 + int(c-'0')
							}
						}
					}
					if _, err := br.Discard(length); err != nil {
						return
					}
					_, _ = c.Write(resp)
				}
			})
		}
	})
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// BenchmarkOutboundRetryPolicy measures one keep-alive request through the whole outbound path on a route without a
// retry policy (connect failures only) and on one retrying 5xx, where no retry happens: the retry machinery costs no
// allocation. A POST body is buffered for replay only under a retry policy.
func BenchmarkOutboundRetryPolicy(b *testing.B) {
	body := strings.Repeat("b", 1024)
	for _, bc := range []struct {
		name  string
		retry bool
		post  bool
	}{
		{"GET/no policy", false, false},
		{"GET/retry 5xx", true, false},
		{"POST 1KiB/no policy", false, true},
		{"POST 1KiB/retry 5xx", true, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			backend := rawBodyBackend(b)
			h := newHarness(b, webConfig(b, "1", func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
				svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(backend)}}
				if bc.retry {
					svc.Routes = []proxyconfig.Route{{Name: "all", Retry: &proxyconfig.RetryPolicy{Attempts: i32(2),
						RetryOn: []string{"5xx"}, NonIdempotent: true}}}
				}
			}))
			conn, err := net.Dial("tcp", h.out)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			req := []byte("GET /bench HTTP/1.1\r\nHost: web\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
			if bc.post {
				req = []byte("POST /bench HTTP/1.1\r\nHost: web\r\nUser-Agent: bench\r\nContent-Length: 1024\r\n\r\n" + body)
			}
			br := bufio.NewReader(conn)
			buf := make([]byte, len("HTTP/1.1 200 OK\r\nContent-Length: 64\r\nContent-Type: text/plain\r\n\r\n")+64)
			b.ReportAllocs()
			for b.Loop() {
				_, _ = conn.Write(req)
				if _, err := io.ReadFull(br, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestMeshRetryReplaysBody retries POSTs over mesh TLS (HTTP/1 and HTTP/2 clients, fixed-length and chunked
// bodies): the application behind the server proxy answers every other request 503 after reading it, and each
// retry carries the whole body. A chunked body beyond maxBodyBytes streams and is never replayed truncated.
func TestMeshRetryReplaysBody(t *testing.T) {
	pki := newTestPKI(t, "mesh")
	var n atomic.Int64
	app := dualBackend(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if n.Add(1)%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "len=%d sum=%d", len(body), byteSum(body))
	})
	mp := newMeshPair(t, meshOpts{aCreds: pki.creds(t, idClient), bCreds: pki.creds(t, idWeb)})
	mp.toApp(app)
	mp.a.writeConfig(webConfig(t, "retry", func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Backends = []proxyconfig.Backend{{Name: "web",
			Endpoints: []proxyconfig.Endpoint{{Address: mp.b.in, Identity: idWeb}}}}
		svc.Routes = []proxyconfig.Route{{Name: "all", Retry: &proxyconfig.RetryPolicy{Attempts: i32(1),
			RetryOn: []string{"5xx"}, NonIdempotent: true, MaxBodyBytes: i32(4096)}}}
	}))
	if _, err := mp.a.watcher.Reload(); err != nil {
		t.Fatal(err)
	}
	small := bytes.Repeat([]byte("mesh body "), 300) // 3000 bytes
	large := bytes.Repeat([]byte("L"), 20000)
	want := func(b []byte) string { return fmt.Sprintf("len=%d sum=%d", len(b), byteSum(b)) }
	for _, c := range []*http.Client{httpClient(t), h2cClient(t)} {
		for _, tc := range []struct {
			name    string
			body    []byte
			chunked bool
		}{{"fixed length", small, false}, {"chunked", small, true}, {"chunked, too long", large, true}} {
			for i := range 2 {
				var body io.Reader = bytes.NewReader(tc.body)
				if tc.chunked {
					body = io.MultiReader(body)
				}
				resp, err := c.Post("http://"+mp.a.out+"/upload", "application/octet-stream", body)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				long := len(tc.body) > 4096
				switch {
				case resp.StatusCode == 200 && string(got) != want(tc.body):
					t.Errorf("%s %s #%d: application saw %q, want %q", resp.Proto, tc.name, i, got, want(tc.body))
				case resp.StatusCode != 200 && (!long || resp.StatusCode != 503):
					t.Errorf("%s %s #%d: status %d", resp.Proto, tc.name, i, resp.StatusCode)
				}
			}
		}
	}
	if n := mp.a.retries("attempted"); n < 4 {
		t.Errorf("%v retries over the mesh", n)
	}
}

func byteSum(b []byte) int {
	s := 0
	for _, c := range b {
		s += int(c)
	}
	return s
}

// TestAccrualSurvivesReload ejects a dead endpoint, then reloads the configuration (a new version adding an
// endpoint): the endpoint stays ejected, so the requests after the reload reach it only as probes.
func TestAccrualSurvivesReload(t *testing.T) {
	a, b, c := okBackend(t, "a"), okBackend(t, "b"), okBackend(t, "c")
	deadLn := listen(t)
	dead := deadLn.Addr().String()
	deadLn.Close()
	doc := func(version string, eps ...string) string {
		return webConfig(t, version, func(c *proxyconfig.Config, svc *proxyconfig.Service) {
			c.Defaults.FailureAccrual = &proxyconfig.FailureAccrual{MinBackoff: proxyconfig.D(time.Minute)}
			svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(eps...)}}
		})
	}
	h := newHarness(t, doc("1", a.addr, b.addr, dead))
	for i := 0; i < 1000 && h.accrualState(dead) == accrual.Healthy; i++ {
		h.load(1, 1, nil)
	}
	if h.accrualState(dead) != accrual.Ejected {
		t.Fatal("dead endpoint not ejected")
	}
	h.writeConfig(doc("2", a.addr, b.addr, dead, c.addr))
	if _, err := h.watcher.Reload(); err != nil || h.store.Load().Version != "2" {
		t.Fatalf("reload: %v", err)
	}
	retries := h.retries("attempted")
	res := h.load(2000, 4, nil)
	if res.statuses[200] != 2000 || c.hits.Load() == 0 {
		t.Errorf("after the reload: %v, new endpoint served %d", res.statuses, c.hits.Load())
	}
	if st := h.accrualState(dead); st != accrual.Ejected {
		t.Errorf("dead endpoint %v after the reload", st)
	}
	if n := h.retries("attempted") - retries; n != 0 {
		t.Errorf("%v connect failures after the reload: the ejection was forgotten", n)
	}
}

// countingHealth answers every Check and counts them.
type countingHealth struct {
	healthpb.UnimplementedHealthServer
	calls *atomic.Int64
}

func (s countingHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	s.calls.Add(1)
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// TestHTTP2BalancedPerRequest checks that requests multiplexed on one client connection are balanced one by one:
// HTTP/2 requests and gRPC calls of a single connection reach every endpoint.
func TestHTTP2BalancedPerRequest(t *testing.T) {
	var backends []*countingBackend
	var grpcCalls [3]atomic.Int64
	var addrs, grpcAddrs []string
	for i := range 3 {
		b := okBackend(t, fmt.Sprint("b", i))
		backends = append(backends, b)
		addrs = append(addrs, b.addr)
		ln := listen(t)
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, countingHealth{calls: &grpcCalls[i]})
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(ln) }()
		t.Cleanup(func() { srv.Stop(); <-done })
		grpcAddrs = append(grpcAddrs, ln.Addr().String())
	}
	h := newHarness(t, webConfig(t, "1", func(c *proxyconfig.Config, svc *proxyconfig.Service) {
		c.Defaults.LoadBalancer = proxyconfig.LoadBalancerRoundRobin
		svc.Backends = []proxyconfig.Backend{{Name: "web", Endpoints: endpoints(addrs...)}}
		c.Services = append(c.Services, proxyconfig.Service{Name: "grpc", Namespace: "shop",
			ClusterIPs: []string{opaqueIP.Addr().String()}, Port: int32(opaqueIP.Port()),
			Backends: []proxyconfig.Backend{{Name: "grpc", Endpoints: endpoints(grpcAddrs...)}}})
	}))
	c := h2cClient(t)
	for range 30 {
		if code, _ := get(t, c, "http://"+h.out+"/"); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	for i, b := range backends {
		if n := b.hits.Load(); n != 10 {
			t.Errorf("HTTP/2 endpoint %d got %d of 30 requests, want 10 (round robin per request)", i, n)
		}
	}
	if n := h.counter("tcp_open_total", map[string]string{"direction": "outbound", "dst_service": "web"}); n != 1 {
		t.Errorf("%v client connections, want one", n)
	}

	h.setDst(opaqueIP)
	cc, err := grpc.NewClient("passthrough:///"+h.out, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)
	for range 30 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range grpcCalls {
		if n := grpcCalls[i].Load(); n != 10 {
			t.Errorf("gRPC endpoint %d got %d of 30 calls, want 10", i, n)
		}
	}
}
