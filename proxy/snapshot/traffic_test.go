package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/balance/accrual"
	"github.com/trellis-mesh/trellis/proxy/circuit"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/retry"
)

type clock struct{ off atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Unix(1_700_000_000, 0).Add(time.Duration(c.off.Load())) }
func (c *clock) Advance(d time.Duration) { c.off.Add(int64(d)) }

var web = netip.MustParseAddrPort("10.96.0.1:80")

// webDoc renders a document with the service web and n endpoints 10.0.0.1:80…, shaped by mutate.
func webDoc(t testing.TB, version string, n int, mutate func(*proxyconfig.Config, *proxyconfig.Service)) *proxyconfig.Loaded {
	t.Helper()
	svc := proxyconfig.Service{Name: "web", Namespace: "shop", ClusterIPs: []string{"10.96.0.1"}, Port: 80,
		Backends: []proxyconfig.Backend{{Name: "web"}}}
	for i := range n {
		svc.Backends[0].Endpoints = append(svc.Backends[0].Endpoints,
			proxyconfig.Endpoint{Address: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1)})
	}
	c := &proxyconfig.Config{APIVersion: proxyconfig.APIVersion, Version: version, Defaults: &proxyconfig.Defaults{}}
	if mutate != nil {
		mutate(c, &svc)
	}
	c.Services = append(c.Services, svc)
	// Round-trip through JSON, as documents arrive.
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := proxyconfig.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	l, err := proxyconfig.Complete(dc)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustCompile(t testing.TB, l *proxyconfig.Loaded, tr *Traffic, m *metrics.Metrics) *Snapshot {
	t.Helper()
	s, err := Compile(l, Options{Metrics: m, Traffic: tr})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fail reports n failures of picks of addr through p (other picks succeed).
func failPicks(t *testing.T, p balance.Picker, addr netip.AddrPort, n int) {
	t.Helper()
	for failed, picks := 0, 0; failed < n; picks++ {
		if picks > 100*n {
			t.Fatalf("%s picked %d times in %d picks", addr, failed, picks)
		}
		ep, done, err := p.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if ep.Addr == addr {
			done(balance.DoneInfo{Err: errors.New("refused")})
			failed++
			continue
		}
		done(balance.DoneInfo{Latency: time.Millisecond})
	}
}

// TestTrafficSurvivesReload checks that a snapshot compiled from a new document finds the failure-accrual state,
// latency estimates, retry budget and circuit breaker of the previous one; and that changing a service's balancer
// or accrual settings starts its accrual state afresh while endpoint latency stays.
func TestTrafficSurvivesReload(t *testing.T) {
	clk := &clock{}
	tr := NewTraffic(TrafficOptions{Now: clk.Now})
	m := metrics.New()
	s1 := mustCompile(t, webDoc(t, "1", 3, nil), tr, m)
	bad := netip.MustParseAddrPort("10.0.0.1:80")
	failPicks(t, s1.Service(web).Default.Backend().Picker, bad, accrual.DefaultConsecutiveFailures)
	acc := tr.Accrual("shop", "web", 80)
	if st, _ := acc.State(bad); st != accrual.Ejected {
		t.Fatalf("endpoint %v after 7 failures", st)
	}
	if _, _, ok := tr.EWMA().Estimate(netip.MustParseAddrPort("10.0.0.2:80")); !ok {
		t.Fatal("no latency estimate")
	}
	budget, breaker := s1.Service(web).Default.Retry.Budget, s1.Service(web).Breaker

	// A new version with a fourth endpoint: same state.
	s2 := mustCompile(t, webDoc(t, "2", 4, nil), tr, m)
	svc := s2.Service(web)
	if tr.Accrual("shop", "web", 80) != acc || svc.Default.Retry.Budget != budget || svc.Breaker != breaker {
		t.Fatal("a reload made new accrual, budget or breaker state")
	}
	for range 100 {
		ep, done, _ := svc.Default.Backend().Picker.Pick()
		if ep.Addr == bad {
			t.Fatal("the new snapshot picked the ejected endpoint before its backoff ended")
		}
		done(balance.DoneInfo{Latency: time.Millisecond})
	}

	// Another balancer: accrual starts afresh, the shared latency state stays.
	s3 := mustCompile(t, webDoc(t, "3", 4, func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.LoadBalancer = proxyconfig.LoadBalancerRoundRobin
	}), tr, m)
	if tr.Accrual("shop", "web", 80) == acc {
		t.Error("changing the balancer kept the accrual builder")
	}
	if st, _ := tr.Accrual("shop", "web", 80).State(bad); st != accrual.Healthy {
		t.Errorf("endpoint %v under a new balancer", st)
	}
	_ = s3

	// New budget settings make a new budget; new limits change the same breaker.
	ratio := 0.5
	s4 := mustCompile(t, webDoc(t, "4", 4, func(c *proxyconfig.Config, svc *proxyconfig.Service) {
		c.Defaults.RetryBudget = &proxyconfig.RetryBudget{Ratio: &ratio}
		svc.MaxRequests = new(int32)
		*svc.MaxRequests = 5
	}), tr, m)
	if s4.Service(web).Default.Retry.Budget == budget {
		t.Error("new budget settings kept the old budget")
	}
	if s4.Service(web).Breaker != breaker || breaker.Limits() != (circuit.Limits{MaxRequests: 5, MaxPending: -1}) {
		t.Errorf("breaker %p (was %p) limits %+v", s4.Service(web).Breaker, breaker, breaker.Limits())
	}
}

// TestTrafficForgetsServices checks that the state of a service absent from the configuration for Retain is
// dropped, and that figures for metrics are summed per service.
func TestTrafficForgetsServices(t *testing.T) {
	clk := &clock{}
	tr := NewTraffic(TrafficOptions{Now: clk.Now, Retain: time.Minute})
	m := metrics.New()
	mustCompile(t, webDoc(t, "1", 2, func(c *proxyconfig.Config, _ *proxyconfig.Service) {
		c.Services = append(c.Services, proxyconfig.Service{Name: "web", Namespace: "shop",
			ClusterIPs: []string{"10.96.0.1"}, Port: 8080, Backends: []proxyconfig.Backend{{Name: "web"}}},
			proxyconfig.Service{Name: "db", Namespace: "shop", ClusterIPs: []string{"10.96.0.2"}, Port: 5432,
				Backends: []proxyconfig.Backend{{Name: "db"}}})
	}), tr, m)
	stats := tr.Stats()
	if len(stats) != 2 || stats[0].Service != "db" || stats[1].Service != "web" {
		t.Fatalf("stats %+v, want db and web (two ports summed)", stats)
	}
	if stats[1].RetryBudget != 2*100 {
		t.Errorf("web's budget %v, want the reserve of both ports (2 × 10/s × 10s)", stats[1].RetryBudget)
	}
	clk.Advance(30 * time.Second)
	mustCompile(t, webDoc(t, "2", 2, nil), tr, m) // db and web:8080 left
	if tr.Accrual("shop", "db", 5432) == nil {
		t.Fatal("db forgotten before Retain")
	}
	clk.Advance(31 * time.Second)
	mustCompile(t, webDoc(t, "3", 2, nil), tr, m)
	if tr.Accrual("shop", "db", 5432) != nil || tr.Accrual("shop", "web", 8080) != nil {
		t.Error("services absent for more than Retain are still kept")
	}
	if tr.Accrual("shop", "web", 80) == nil {
		t.Error("a present service was forgotten")
	}
}

func TestCompileRetry(t *testing.T) {
	s := mustCompile(t, webDoc(t, "1", 2, func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Routes = []proxyconfig.Route{{Name: "r", Retry: &proxyconfig.RetryPolicy{
			Attempts: new(int32), RetryOn: []string{"5xx", "unavailable"}, NonIdempotent: true,
			PerTryTimeout: proxyconfig.D(time.Second),
			Backoff:       &proxyconfig.RetryBackoff{Base: proxyconfig.D(time.Millisecond), Max: proxyconfig.D(time.Second)},
		}}}
	}), NewTraffic(TrafficOptions{}), metrics.New())
	svc := s.Service(web)
	def, r := svc.Default.Retry, svc.Routes[0].Retry
	if def.Attempts != DefaultConnectRetries || def.MaxBodyBytes != 0 || def.PerTryTimeout != 0 {
		t.Errorf("default plan %+v", def)
	}
	if !def.Policy.Retryable("POST", retry.Outcome{ConnectFailure: true}) ||
		def.Policy.Retryable("GET", retry.Outcome{Status: 503}) {
		t.Error("the default plan retries other than connect failures and refused streams")
	}
	if r.Attempts != 0 || r.PerTryTimeout != time.Second || r.MaxBodyBytes != 65536 ||
		r.Backoff.Base != time.Millisecond || r.Backoff.Max != time.Second || r.Budget != def.Budget {
		t.Errorf("route plan %+v", r)
	}
	if !r.Policy.Retryable("POST", retry.Outcome{Status: 500}) || !r.Policy.Retryable("POST", retry.Outcome{GRPCStatus: 14}) {
		t.Error("route policy does not retry 5xx POSTs and UNAVAILABLE")
	}
}

func TestUnresolvedAndModifiers(t *testing.T) {
	s := mustCompile(t, webDoc(t, "1", 1, func(_ *proxyconfig.Config, svc *proxyconfig.Service) {
		svc.Backends = append(svc.Backends, proxyconfig.Backend{Name: "gone", Unresolved: "no such Service"})
		svc.Routes = []proxyconfig.Route{{Name: "r", Backends: []proxyconfig.BackendRef{{Name: "gone"}},
			RequestHeaders: &proxyconfig.HeaderModifier{Remove: []string{"x-a"}}}}
	}), NewTraffic(TrafficOptions{}), metrics.New())
	rt := s.Service(web).Routes[0]
	if be := rt.Backend(); be.Unresolved != "no such Service" {
		t.Errorf("backend %+v", be)
	}
	if rt.RequestHeaders == nil || rt.ResponseHeaders != nil || !rt.RequestHeaders.Drops([]byte("X-A")) {
		t.Errorf("modifiers %+v %+v", rt.RequestHeaders, rt.ResponseHeaders)
	}
}

// BenchmarkPickWired measures a pick and its done through a compiled backend's Picker, as the relays make them: the
// service's balancer wrapped in failure accrual, built by the proxy's Traffic.
func BenchmarkPickWired(b *testing.B) {
	for _, lb := range []string{proxyconfig.LoadBalancerEWMA, proxyconfig.LoadBalancerLeastRequest,
		proxyconfig.LoadBalancerRoundRobin, proxyconfig.LoadBalancerRandom} {
		for _, n := range []int{3, 30} {
			b.Run(fmt.Sprintf("%s/%d", lb, n), func(b *testing.B) {
				s := mustCompile(b, webDoc(b, "1", n, func(c *proxyconfig.Config, _ *proxyconfig.Service) {
					c.Defaults.LoadBalancer = lb
				}), NewTraffic(TrafficOptions{}), metrics.New())
				p := s.Service(web).Default.Backend().Picker
				b.ReportAllocs()
				for b.Loop() {
					_, done, err := p.Pick()
					if err != nil {
						b.Fatal(err)
					}
					done(balance.DoneInfo{Latency: time.Millisecond})
				}
			})
		}
	}
}
