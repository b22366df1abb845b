package snapshot

import (
	"net/netip"
	"testing"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/authz"
	"github.com/trellis-mesh/trellis/proxy/metrics"
)

// inboundDoc is the inbound section the operator renders for a MeshPolicy on the pods app=web, port 8080: the
// ServiceAccount shop/cart may use the port, the namespace monitoring may GET /metrics (and below), the rest is
// denied; inbound.ports makes port 5432 opaque.
const inboundDoc = `{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "1", "inbound": {
  "defaultPolicy": "all-authenticated",
  "ports": [{"port": 5432, "protocol": "opaque"}],
  "workloads": [{"name": "shop/web", "namespace": "shop", "matchLabels": {"app": "web"},
    "ports": [{"port": 8080, "defaultPolicy": "deny",
      "authorizations": [{"name": "cart", "serviceAccounts": [{"name": "cart", "namespace": "shop"}]}],
      "routes": [{"name": "metrics-0", "matches": [{"method": "GET", "path": {"value": "/metrics"}}],
        "authorizations": [{"name": "metrics", "namespaces": ["monitoring"]}]}]}]}]}}`

func compileInboundDoc(t testing.TB, namespace string, labels map[string]string) *Snapshot {
	t.Helper()
	c, err := proxyconfig.Decode([]byte(inboundDoc))
	if err != nil {
		t.Fatal(err)
	}
	l, err := proxyconfig.Complete(c)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Compile(l, Options{Metrics: metrics.New(), PodNamespace: namespace, PodLabels: labels})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestInboundAuthz(t *testing.T) {
	const (
		idCart = "spiffe://cluster.local/ns/shop/sa/cart"
		idProm = "spiffe://cluster.local/ns/monitoring/sa/prometheus"
	)
	pod := netip.MustParseAddrPort("10.244.1.7:41000")
	d := authz.NewDefault(authz.DefaultOptions{})
	web := compileInboundDoc(t, "shop", map[string]string{"app": "web"})
	other := compileInboundDoc(t, "shop", map[string]string{"app": "cart"})
	for _, tc := range []struct {
		name     string
		s        *Snapshot
		identity string
		r        authz.HTTPRequest
		allow    bool
		rule     string
		route    string
	}{
		{"service account", web, idCart, req{method: "POST", path: "/orders"}, true, "shop/web/cart", ""},
		{"route", web, idProm, req{method: "GET", path: "/metrics/cpu"}, true, "shop/web/metrics", "metrics-0"},
		{"route, other method", web, idProm, req{method: "POST", path: "/metrics"}, false, "default:deny", ""},
		{"route, other path segment", web, idProm, req{method: "GET", path: "/metricsx"}, false, "default:deny", ""},
		{"route, TCP", web, idProm, nil, false, "default:deny", ""},
		{"pod the entry does not select", other, idProm, req{method: "POST", path: "/orders"}, true, "default:all-authenticated", ""},
		{"pod the entry does not select, plaintext", other, "", req{method: "GET", path: "/"}, false, "default:all-authenticated", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := d.Authorize(authz.Request{Port: 8080, Client: pod, Identity: tc.identity, HTTP: tc.r,
				Policy: tc.s.Authz(8080)})
			if got.Allow != tc.allow || got.Authorization != tc.rule || got.Route != tc.route {
				t.Errorf("%+v, want allow=%v rule %s route %q", got, tc.allow, tc.rule, tc.route)
			}
		})
	}
	if p := web.Inbound(8080); p == nil || p.DefaultPolicy != proxyconfig.PolicyDeny || web.Policy(8080) != proxyconfig.PolicyDeny {
		t.Errorf("port 8080 of the selected pod: %+v", p)
	}
	if other.Inbound(8080) != nil || other.Policy(8080) != proxyconfig.PolicyAllAuthenticated {
		t.Errorf("port 8080 of another pod: %+v %s", other.Inbound(8080), other.Policy(8080))
	}
	if p := web.Inbound(5432); p == nil || !p.Opaque || web.Policy(5432) != proxyconfig.PolicyAllAuthenticated {
		t.Errorf("port 5432: %+v", p)
	}
	// Another namespace's pod with the same labels.
	if s := compileInboundDoc(t, "other", map[string]string{"app": "web"}); s.Policy(8080) != proxyconfig.PolicyAllAuthenticated {
		t.Errorf("a pod of another namespace got %s on 8080", s.Policy(8080))
	}
}

// BenchmarkInboundDecision measures what the inbound path does per request: look up the port's settings in the
// snapshot and decide, with the real route matchers.
func BenchmarkInboundDecision(b *testing.B) {
	s := compileInboundDoc(b, "shop", map[string]string{"app": "web"})
	d := authz.NewDefault(authz.DefaultOptions{ProbePorts: []uint16{8081}})
	pod := netip.MustParseAddrPort("10.244.1.7:41000")
	for _, bc := range []struct {
		name     string
		identity string
		r        authz.HTTPRequest
		allow    bool
	}{
		{"service-account", "spiffe://cluster.local/ns/shop/sa/cart", req{method: "POST", path: "/orders"}, true},
		{"route", "spiffe://cluster.local/ns/monitoring/sa/prometheus", req{method: "GET", path: "/metrics"}, true},
		{"denied", "spiffe://cluster.local/ns/shop/sa/web", req{method: "GET", path: "/metrics"}, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d.Authorize(authz.Request{Port: 8080, Client: pod, Identity: bc.identity, HTTP: bc.r,
					Policy: s.Authz(8080)}).Allow != bc.allow {
					b.Fatal("wrong decision")
				}
			}
		})
	}
}
