package snapshot

import (
	"net/netip"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/metrics"
)

type req struct {
	method, path string
	headers      map[string]string
}

func (r req) Method() string { return r.method }
func (r req) Path() string   { return r.path }
func (r req) Header(n string) (string, bool) {
	v, ok := r.headers[n]
	return v, ok
}

const doc = `{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "1", "services": [{
  "name": "web", "namespace": "shop", "clusterIPs": ["10.96.0.1", "fd00::1"], "port": 80,
  "backends": [
    {"name": "v1", "weight": 3, "endpoints": [{"address": "10.0.0.1:80"}]},
    {"name": "v2", "weight": 1, "endpoints": [{"address": "10.0.0.2:80"}]}],
  "routes": [
    {"name": "exact", "matches": [{"path": {"type": "Exact", "value": "/login"}, "method": "POST"}],
     "backends": [{"name": "v2"}], "timeout": "2s"},
    {"name": "prefix", "matches": [{"path": {"value": "/api"}}]},
    {"name": "regex", "matches": [{"path": {"type": "RegularExpression", "value": "/img/[0-9]+\\.png"}}]},
    {"name": "header", "matches": [{"headers": [{"name": "X-Canary", "value": "yes"},
      {"name": "x-user", "type": "RegularExpression", "value": "[a-z]+"}]}]}]}]}`

func compile(t *testing.T, randN func(uint64) uint64) *Snapshot {
	t.Helper()
	c, err := proxyconfig.Decode([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	l, err := proxyconfig.Complete(c)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Compile(l, Options{Metrics: metrics.New(), RandN: randN})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRouteMatching(t *testing.T) {
	s := compile(t, nil)
	svc := s.Service(netip.MustParseAddrPort("10.96.0.1:80"))
	if svc == nil || s.Service(netip.MustParseAddrPort("[fd00::1]:80")) != svc {
		t.Fatal("service not found by both cluster IPs")
	}
	if s.Service(netip.MustParseAddrPort("[::ffff:10.96.0.1]:80")) != svc {
		t.Error("IPv4-mapped destination not found")
	}
	if s.Service(netip.MustParseAddrPort("10.96.0.1:81")) != nil {
		t.Error("wrong port matched")
	}
	tests := []struct {
		name string
		r    req
		want string
	}{
		{"exact", req{method: "POST", path: "/login"}, "exact"},
		{"exact wrong method", req{method: "GET", path: "/login"}, ""},
		{"prefix", req{method: "GET", path: "/api/v1"}, "prefix"},
		{"prefix whole", req{method: "GET", path: "/api"}, "prefix"},
		{"prefix not segment", req{method: "GET", path: "/apix"}, ""},
		{"regex", req{method: "GET", path: "/img/42.png"}, "regex"},
		{"regex anchored", req{method: "GET", path: "/img/42.png.bak"}, ""},
		{"headers", req{method: "GET", path: "/", headers: map[string]string{"x-canary": "yes", "x-user": "bob"}}, "header"},
		{"header regex fails", req{method: "GET", path: "/", headers: map[string]string{"x-canary": "yes", "x-user": "B0b"}}, ""},
		{"no match", req{method: "GET", path: "/"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := svc.Route(tt.r).Name; got != tt.want {
				t.Errorf("route %q, want %q", got, tt.want)
			}
		})
	}
}

// TestWeightedBackends checks the traffic split with an injected random source: weights 3:1 map [0,3) to v1 and 3 to
// v2; a route's own backend list overrides the split.
func TestWeightedBackends(t *testing.T) {
	var next uint64
	s := compile(t, func(n uint64) uint64 { v := next % n; next++; return v })
	svc := s.Service(netip.MustParseAddrPort("10.96.0.1:80"))
	counts := map[string]int{}
	for range 8 {
		counts[svc.Default.Backend().Name]++
	}
	if counts["v1"] != 6 || counts["v2"] != 2 {
		t.Errorf("split %v, want v1:6 v2:2", counts)
	}
	exact := svc.Route(req{method: "POST", path: "/login"})
	if b := exact.Backend(); b.Name != "v2" || exact.Timeout.Seconds() != 2 {
		t.Errorf("route override: backend %s timeout %v", b.Name, exact.Timeout)
	}
}

func TestStoreSwap(t *testing.T) {
	var st Store
	if st.Load() != nil {
		t.Fatal("new store not empty")
	}
	a, b := &Snapshot{Version: "a"}, &Snapshot{Version: "b"}
	st.Swap(a)
	if prev := st.Swap(b); prev != a || st.Load() != b {
		t.Fatal("swap did not install the new snapshot")
	}
}

func BenchmarkRoute(b *testing.B) {
	var t testing.T
	s := compile(&t, nil)
	svc := s.Service(netip.MustParseAddrPort("10.96.0.1:80"))
	r := req{method: "GET", path: "/api/items"}
	b.ReportAllocs()
	for b.Loop() {
		rt := svc.Route(r)
		be := rt.Backend()
		_, done, _ := be.Picker.Pick()
		done(balance.DoneInfo{Latency: time.Millisecond})
	}
}
