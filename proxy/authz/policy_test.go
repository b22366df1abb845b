package authz

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
)

// testRequest is an HTTP request for route matching.
type testRequest struct{ method, path string }

func (r testRequest) Method() string               { return r.method }
func (r testRequest) Path() string                 { return r.path }
func (r testRequest) Header(string) (string, bool) { return "", false }
func (r testRequest) String() string               { return r.method + " " + r.path }
func (m testMatcher) Matches(r HTTPRequest) bool   { return m.match(r) }
func testMatches(ms []proxyconfig.Match) (Matcher, error) {
	return testMatcher{func(r HTTPRequest) bool {
		if len(ms) == 0 {
			return true
		}
		for _, m := range ms {
			if (m.Method == "" || m.Method == r.Method()) && (m.Path == nil || strings.HasPrefix(r.Path(), m.Path.Value)) {
				return true
			}
		}
		return false
	}}, nil
}

// testMatcher matches methods exactly and paths by prefix, enough for these tests (the snapshot package compiles
// the real matches).
type testMatcher struct{ match func(HTTPRequest) bool }

const (
	idWeb     = "spiffe://cluster.local/ns/shop/sa/web"
	idCart    = "spiffe://cluster.local/ns/shop/sa/cart"
	idProm    = "spiffe://cluster.local/ns/monitoring/sa/prometheus"
	idForeign = "spiffe://other.example/ns/shop/sa/web"
)

// compile defaults and validates a document's inbound section and compiles it for a pod of namespace shop.
func compile(t testing.TB, in *proxyconfig.Inbound, labels map[string]string) *Table {
	t.Helper()
	c := &proxyconfig.Config{APIVersion: proxyconfig.APIVersion, Version: "1", Inbound: in}
	if _, err := proxyconfig.Complete(c); err != nil {
		t.Fatal(err)
	}
	table, err := Compile(c.Inbound, CompileOptions{Namespace: "shop", Labels: labels, Matches: testMatches})
	if err != nil {
		t.Fatal(err)
	}
	return table
}

func TestAuthorizationSources(t *testing.T) {
	pod := netip.MustParseAddrPort("10.244.1.7:41000")
	public := netip.MustParseAddrPort("203.0.113.9:41000")
	many := make([]string, 0, 12) // enough identities for the set lookup
	for i := range 12 {
		many = append(many, "spiffe://cluster.local/ns/shop/sa/many-"+string(rune('a'+i)))
	}
	for _, tc := range []struct {
		name     string
		auth     proxyconfig.Authorization
		client   netip.AddrPort
		identity string
		allow    bool
	}{
		{"exact identity", proxyconfig.Authorization{Identities: []string{idWeb}}, pod, idWeb, true},
		{"other identity", proxyconfig.Authorization{Identities: []string{idWeb}}, pod, idCart, false},
		{"identity, unauthenticated", proxyconfig.Authorization{Identities: []string{idWeb}}, pod, "", false},
		{"identity prefix", proxyconfig.Authorization{Identities: []string{"spiffe://cluster.local/ns/shop/*"}}, pod, idCart, true},
		{"identity prefix, other namespace", proxyconfig.Authorization{Identities: []string{"spiffe://cluster.local/ns/shop/*"}}, pod, idProm, false},
		{"any authenticated", proxyconfig.Authorization{Identities: []string{"*"}}, pod, idForeign, true},
		{"any authenticated, unauthenticated", proxyconfig.Authorization{Identities: []string{"*"}}, pod, "", false},
		{"service account", proxyconfig.Authorization{ServiceAccounts: []proxyconfig.ServiceAccountRef{{Name: "web", Namespace: "shop"}}}, pod, idWeb, true},
		{"service account of another trust domain", proxyconfig.Authorization{ServiceAccounts: []proxyconfig.ServiceAccountRef{{Name: "web", Namespace: "shop"}}}, pod, idForeign, false},
		{"service account, other name", proxyconfig.Authorization{ServiceAccounts: []proxyconfig.ServiceAccountRef{{Name: "web", Namespace: "shop"}}}, pod, idCart, false},
		{"namespace", proxyconfig.Authorization{Namespaces: []string{"monitoring"}}, pod, idProm, true},
		{"namespace, other", proxyconfig.Authorization{Namespaces: []string{"monitoring"}}, pod, idWeb, false},
		{"namespace, other trust domain", proxyconfig.Authorization{Namespaces: []string{"shop"}}, pod, idForeign, false},
		{"namespace, prefix of another", proxyconfig.Authorization{Namespaces: []string{"mon"}}, pod, idProm, false},
		{"unauthenticated", proxyconfig.Authorization{Unauthenticated: true}, public, "", true},
		{"unauthenticated admits authenticated", proxyconfig.Authorization{Unauthenticated: true}, pod, idWeb, true},
		{"networks", proxyconfig.Authorization{Unauthenticated: true, Networks: []string{"10.244.0.0/16"}}, pod, "", true},
		{"outside networks", proxyconfig.Authorization{Unauthenticated: true, Networks: []string{"10.244.0.0/16"}}, public, "", false},
		{"networks restrict identities", proxyconfig.Authorization{Identities: []string{idWeb}, Networks: []string{"10.244.0.0/16"}}, public, idWeb, false},
		{"IPv4-mapped client in networks", proxyconfig.Authorization{Unauthenticated: true, Networks: []string{"10.244.0.0/16"}}, netip.MustParseAddrPort("[::ffff:10.244.1.7]:1"), "", true},
		{"many identities", proxyconfig.Authorization{Identities: many}, pod, many[7], true},
		{"many identities, not listed", proxyconfig.Authorization{Identities: many}, pod, idWeb, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.auth.Name = "rule"
			table := compile(t, &proxyconfig.Inbound{Ports: []proxyconfig.InboundPort{{Port: 8080,
				DefaultPolicy: proxyconfig.PolicyDeny, Authorizations: []proxyconfig.Authorization{tc.auth}}}}, nil)
			d := NewDefault(DefaultOptions{}).Authorize(Request{Port: 8080, Client: tc.client, Identity: tc.identity,
				Policy: table.Policy(8080)})
			rule := "default:deny"
			if tc.allow {
				rule = "port-8080/rule"
			}
			if d.Allow != tc.allow || d.Authorization != rule {
				t.Errorf("%+v, want allow=%v by %s", d, tc.allow, rule)
			}
			if !tc.allow && d.Reason != "default:deny: no authorization of port-8080 allows the client" {
				t.Errorf("reason %q", d.Reason)
			}
		})
	}
}

// meshPolicyDoc is what the operator renders for a MeshPolicy on Service web (pods app=web, port 8080) that lets
// ServiceAccount shop/cart use everything and namespace monitoring GET /metrics, denying the rest; and a second
// policy of the same pods for port 9090, open to every client of the cluster.
func meshPolicyDoc(defaultPolicy string) *proxyconfig.Inbound {
	return &proxyconfig.Inbound{DefaultPolicy: defaultPolicy, Workloads: []proxyconfig.InboundWorkload{
		{Name: "shop/web", Namespace: "shop", MatchLabels: map[string]string{"app": "web"},
			Ports: []proxyconfig.InboundPort{{Port: 8080, DefaultPolicy: proxyconfig.PolicyDeny,
				Authorizations: []proxyconfig.Authorization{{Name: "cart",
					ServiceAccounts: []proxyconfig.ServiceAccountRef{{Name: "cart", Namespace: "shop"}}}},
				Routes: []proxyconfig.InboundRoute{{Name: "metrics-0",
					Matches:        []proxyconfig.Match{{Method: "GET", Path: &proxyconfig.PathMatch{Value: "/metrics"}}},
					Authorizations: []proxyconfig.Authorization{{Name: "metrics", Namespaces: []string{"monitoring"}}}}}}}},
		{Name: "shop/web-admin", Namespace: "shop", MatchLabels: map[string]string{"app": "web"},
			Ports: []proxyconfig.InboundPort{{Port: 9090, DefaultPolicy: proxyconfig.PolicyClusterAuthenticated}}},
	}}
}

func TestRoutesAndPorts(t *testing.T) {
	table := compile(t, meshPolicyDoc(proxyconfig.PolicyAllUnauthenticated), map[string]string{"app": "web"})
	// The kubelet probes GET /healthz on 8080, the MeshPolicy's port, and 8081 with a TCP probe.
	d := NewDefault(DefaultOptions{ProbePaths: []ProbePath{{8080, "/healthz"}}, ProbePorts: []uint16{8081}})
	pod := netip.MustParseAddrPort("10.244.1.7:41000")
	public := netip.MustParseAddrPort("203.0.113.9:41000")
	for _, tc := range []struct {
		port     uint16
		req      HTTPRequest // nil: TCP
		client   netip.AddrPort
		identity string
		want     Decision
	}{
		{8080, testRequest{"POST", "/orders"}, pod, idCart, Decision{Allow: true, Authorization: "shop/web/cart"}},
		{8080, testRequest{"GET", "/metrics"}, pod, idCart, Decision{Allow: true, Authorization: "shop/web/cart", Route: "metrics-0"}},
		{8080, nil, pod, idCart, Decision{Allow: true, Authorization: "shop/web/cart"}},
		{8080, testRequest{"GET", "/metrics"}, pod, idProm, Decision{Allow: true, Authorization: "shop/web/metrics", Route: "metrics-0"}},
		{8080, testRequest{"GET", "/metrics/x"}, pod, idProm, Decision{Allow: true, Authorization: "shop/web/metrics", Route: "metrics-0"}},
		{8080, testRequest{"POST", "/metrics"}, pod, idProm, Decision{Authorization: "default:deny",
			Reason: "default:deny: no authorization of shop/web allows the client"}},
		{8080, nil, pod, idProm, Decision{Authorization: "default:deny",
			Reason: "default:deny: no authorization of shop/web allows the client"}},
		{8080, testRequest{"GET", "/metrics"}, pod, idWeb, Decision{Authorization: "default:deny", Route: "metrics-0",
			Reason: "default:deny: no authorization of shop/web allows the client"}},
		{8080, testRequest{"GET", "/metrics"}, pod, "", Decision{Authorization: "default:deny", Route: "metrics-0",
			Reason: "default:deny: no authorization of shop/web allows the client"}},
		// The second policy's port: cluster-authenticated.
		{9090, nil, pod, "", Decision{Allow: true, Authorization: "default:cluster-authenticated"}},
		{9090, nil, public, "", Decision{Authorization: "default:cluster-authenticated",
			Reason: "default:cluster-authenticated: " + ReasonOutsideNetworks}},
		// Other ports: the document's default.
		{7070, nil, public, "", Decision{Allow: true, Authorization: "default:all-unauthenticated"}},
		// The probe's path is open to every client; the rest of the port keeps the MeshPolicy.
		{8080, testRequest{"GET", "/healthz"}, public, "", Decision{Allow: true, Authorization: RuleProbe}},
		{8080, testRequest{"HEAD", "/healthz"}, pod, idWeb, Decision{Allow: true, Authorization: RuleProbe}},
		{8080, testRequest{"GET", "/healthz"}, pod, idCart, Decision{Allow: true, Authorization: RuleProbe}},
		{8080, testRequest{"GET", "/"}, public, "", Decision{Authorization: "default:deny",
			Reason: "default:deny: no authorization of shop/web allows the client"}},
		{8080, testRequest{"POST", "/healthz"}, pod, idWeb, Decision{Authorization: "default:deny",
			Reason: "default:deny: no authorization of shop/web allows the client"}},
		{8080, nil, public, "", Decision{Authorization: "default:deny",
			Reason: "default:deny: no authorization of shop/web allows the client"}},
		// The port of a TCP probe is open to every client.
		{8081, nil, public, "", Decision{Allow: true, Authorization: RuleProbe}},
		{8081, testRequest{"GET", "/healthz"}, public, "", Decision{Allow: true, Authorization: RuleProbe}},
	} {
		got := d.Authorize(Request{Port: tc.port, Client: tc.client, Identity: tc.identity, HTTP: tc.req,
			Policy: table.Policy(tc.port)})
		if got != tc.want {
			t.Errorf("port %d %v from %q: %+v, want %+v", tc.port, tc.req, tc.identity, got, tc.want)
		}
	}
}

func TestWorkloadSelection(t *testing.T) {
	port := func(n int32, policy string) []proxyconfig.InboundPort {
		return []proxyconfig.InboundPort{{Port: n, DefaultPolicy: policy}}
	}
	in := &proxyconfig.Inbound{
		DefaultPolicy: proxyconfig.PolicyAllAuthenticated,
		Ports: []proxyconfig.InboundPort{{Port: 8080, Name: "http", Protocol: proxyconfig.ProtocolOpaque,
			DefaultPolicy: proxyconfig.PolicyClusterAuthenticated}},
		Workloads: []proxyconfig.InboundWorkload{
			{Name: "other-ns/all", Namespace: "other-ns", Ports: port(8080, proxyconfig.PolicyDeny)},
			{Name: "shop/db", Namespace: "shop", MatchLabels: map[string]string{"app": "db"}, Ports: port(8080, proxyconfig.PolicyDeny)},
			{Name: "shop/canary", Namespace: "shop", MatchExpressions: []proxyconfig.LabelRequirement{
				{Key: "app", Operator: "In", Values: []string{"web", "api"}},
				{Key: "track", Operator: "Exists"},
				{Key: "legacy", Operator: "DoesNotExist"},
				{Key: "tier", Operator: "NotIn", Values: []string{"frontend"}},
			}, Ports: port(8080, proxyconfig.PolicyDeny)},
			{Name: "shop/web", Namespace: "shop", MatchLabels: map[string]string{"app": "web"},
				Ports: port(8080, proxyconfig.PolicyAllUnauthenticated)},
			{Name: "shop/web-rest", Namespace: "shop", MatchLabels: map[string]string{"app": "web"},
				DefaultPolicy: proxyconfig.PolicyDeny},
		},
	}
	for _, tc := range []struct {
		labels      map[string]string
		port        uint16
		policy      string
		source      string
		otherPolicy string
	}{
		// No entry selects the pod: inbound.ports, then inbound.defaultPolicy.
		{map[string]string{"app": "cache"}, 8080, proxyconfig.PolicyClusterAuthenticated, "port-8080", proxyconfig.PolicyAllAuthenticated},
		{nil, 8080, proxyconfig.PolicyClusterAuthenticated, "port-8080", proxyconfig.PolicyAllAuthenticated},
		{map[string]string{"app": "db"}, 8080, proxyconfig.PolicyDeny, "shop/db", proxyconfig.PolicyAllAuthenticated},
		// matchExpressions.
		{map[string]string{"app": "web", "track": "canary"}, 8080, proxyconfig.PolicyDeny, "shop/canary", proxyconfig.PolicyDeny},
		{map[string]string{"app": "api", "track": "canary", "tier": "backend"}, 8080, proxyconfig.PolicyDeny, "shop/canary", proxyconfig.PolicyAllAuthenticated},
		{map[string]string{"app": "web", "track": "canary", "legacy": "yes"}, 8080, proxyconfig.PolicyAllUnauthenticated, "shop/web", proxyconfig.PolicyDeny},
		{map[string]string{"app": "web", "track": "canary", "tier": "frontend"}, 8080, proxyconfig.PolicyAllUnauthenticated, "shop/web", proxyconfig.PolicyDeny},
		{map[string]string{"app": "web"}, 8080, proxyconfig.PolicyAllUnauthenticated, "shop/web", proxyconfig.PolicyDeny},
		// A port no entry lists: the first entry with settings of other ports.
		{map[string]string{"app": "web"}, 9090, proxyconfig.PolicyDeny, "shop/web-rest", proxyconfig.PolicyDeny},
	} {
		table := compile(t, in, tc.labels)
		p := table.Policy(tc.port)
		if p.DefaultPolicy != tc.policy || p.Source != tc.source {
			t.Errorf("labels %v port %d: %s from %s, want %s from %s", tc.labels, tc.port, p.DefaultPolicy, p.Source,
				tc.policy, tc.source)
		}
		if got := table.Other().DefaultPolicy; got != tc.otherPolicy {
			t.Errorf("labels %v: other ports %s, want %s", tc.labels, got, tc.otherPolicy)
		}
		// The port's name and protocol come from inbound.ports when no applying entry sets them.
		if lp := table.Port(8080); lp == nil || lp.Name != "http" || lp.Protocol != proxyconfig.ProtocolOpaque {
			t.Errorf("labels %v: port 8080 = %+v", tc.labels, lp)
		}
	}
	// A pod of another namespace sees no entry of shop.
	c := &proxyconfig.Config{APIVersion: proxyconfig.APIVersion, Version: "1", Inbound: in}
	if _, err := proxyconfig.Complete(c); err != nil {
		t.Fatal(err)
	}
	table, err := Compile(c.Inbound, CompileOptions{Namespace: "other-ns", Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := table.Policy(8080); p.Source != "other-ns/all" || p.DefaultPolicy != proxyconfig.PolicyDeny {
		t.Errorf("other-ns port 8080: %s from %s", p.DefaultPolicy, p.Source)
	}
}

func TestSelectsEmptySelector(t *testing.T) {
	if !Selects(&proxyconfig.InboundWorkload{}, nil) || !Selects(&proxyconfig.InboundWorkload{}, map[string]string{"a": "b"}) {
		t.Error("an empty selector must select every pod")
	}
	if Selects(&proxyconfig.InboundWorkload{MatchExpressions: []proxyconfig.LabelRequirement{{Key: "a", Operator: "Bogus"}}}, nil) {
		t.Error("an unknown operator must select nothing")
	}
}

// BenchmarkDecision measures the decision for a port with a MeshPolicy (two port authorizations checked before a
// route) and two kubelet HTTP probes, and one with the default policy only.
func BenchmarkDecision(b *testing.B) {
	table := compile(b, meshPolicyDoc(proxyconfig.PolicyAllUnauthenticated), map[string]string{"app": "web"})
	d := NewDefault(DefaultOptions{ProbePaths: []ProbePath{{8080, "/healthz"}, {8080, "/ready"}},
		ProbePorts: []uint16{8081}})
	pod := netip.MustParseAddrPort("10.244.1.7:41000")
	for _, bc := range []struct {
		name  string
		r     Request
		allow bool
	}{
		{"authorization", Request{Port: 8080, Client: pod, Identity: idCart, HTTP: testRequest{"POST", "/orders"}}, true},
		{"route", Request{Port: 8080, Client: pod, Identity: idProm, HTTP: testRequest{"GET", "/metrics"}}, true},
		{"denied", Request{Port: 8080, Client: pod, Identity: idWeb, HTTP: testRequest{"POST", "/orders"}}, false},
		{"default-policy", Request{Port: 9090, Client: pod, Identity: idWeb}, true},
		{"probe-path", Request{Port: 8080, Client: pod, HTTP: testRequest{"GET", "/ready"}}, true},
	} {
		bc.r.Policy = table.Policy(bc.r.Port)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d.Authorize(bc.r).Allow != bc.allow {
					b.Fatal("wrong decision")
				}
			}
		})
	}
}
