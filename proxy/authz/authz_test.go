package authz

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDefault(t *testing.T) {
	const (
		local   = "spiffe://cluster.local/ns/shop/sa/web"
		foreign = "spiffe://other.example/ns/shop/sa/web"
		probe   = 8081
	)
	pod := netip.MustParseAddrPort("10.244.1.7:41000")
	ula := netip.MustParseAddrPort("[fd00:10:244::7]:41000")
	public := netip.MustParseAddrPort("203.0.113.9:41000")
	mapped := netip.MustParseAddrPort("[::ffff:192.168.1.4]:41000")
	d := NewDefault(DefaultOptions{TrustDomain: "cluster.local", ProbePorts: []uint16{probe}})
	for _, tc := range []struct {
		policy   string
		port     uint16
		client   netip.AddrPort
		identity string
		allow    bool
		rule     string
		reason   string
	}{
		{"", 80, public, "", true, "default:all-unauthenticated", ""},
		{proxyconfig.PolicyAllUnauthenticated, 80, public, "", true, "default:all-unauthenticated", ""},
		{proxyconfig.PolicyAllAuthenticated, 80, pod, "", false, "default:all-authenticated", ReasonUnauthenticated},
		{proxyconfig.PolicyAllAuthenticated, 80, pod, local, true, "default:all-authenticated", ""},
		{proxyconfig.PolicyAllAuthenticated, 80, public, foreign, true, "default:all-authenticated", ""},
		{proxyconfig.PolicyClusterAuthenticated, 80, public, local, true, "default:cluster-authenticated", ""},
		{proxyconfig.PolicyClusterAuthenticated, 80, pod, foreign, false, "default:cluster-authenticated", ReasonForeignDomain},
		{proxyconfig.PolicyClusterAuthenticated, 80, pod, "", true, "default:cluster-authenticated", ""},
		{proxyconfig.PolicyClusterAuthenticated, 80, ula, "", true, "default:cluster-authenticated", ""},
		{proxyconfig.PolicyClusterAuthenticated, 80, mapped, "", true, "default:cluster-authenticated", ""},
		{proxyconfig.PolicyClusterAuthenticated, 80, public, "", false, "default:cluster-authenticated", ReasonOutsideNetworks},
		{proxyconfig.PolicyDeny, 80, pod, local, false, "default:deny", ReasonDenied},
		{proxyconfig.PolicyDeny, 80, pod, "", false, "default:deny", ReasonDenied},
		// The port of a TCP, gRPC or HTTPS probe: open to every client.
		{proxyconfig.PolicyDeny, probe, public, "", true, RuleProbe, ""},
		{proxyconfig.PolicyAllAuthenticated, probe, pod, "", true, RuleProbe, ""},
	} {
		got := d.Authorize(Request{Port: tc.port, Client: tc.client, Identity: tc.identity, DefaultPolicy: tc.policy})
		want := Decision{Allow: tc.allow, Authorization: tc.rule}
		if tc.reason != "" {
			want.Reason = tc.rule + ": " + tc.reason
		}
		if got != want {
			t.Errorf("%s port %d from %v as %q: %+v, want %+v", tc.policy, tc.port, tc.client, tc.identity, got, want)
		}
	}
}

// TestProbes checks the kubelet's allowance: on a port with an HTTP probe, GET and HEAD requests for the probe's
// paths from any client, and nothing else; on the port of a TCP or gRPC probe, everything.
func TestProbes(t *testing.T) {
	const (
		httpProbed = 8080 // readiness GET /ready, liveness GET /healthz
		tcpProbed  = 5432 // a tcpSocket probe
		other      = 9090
	)
	public := netip.MustParseAddrPort("203.0.113.9:41000")
	d := NewDefault(DefaultOptions{ProbePaths: []ProbePath{{httpProbed, "/ready"}, {httpProbed, "/healthz"}},
		ProbePorts: []uint16{tcpProbed}})
	policies := []string{proxyconfig.PolicyDeny, proxyconfig.PolicyAllAuthenticated, proxyconfig.PolicyClusterAuthenticated}
	for _, policy := range policies {
		for _, tc := range []struct {
			port  uint16
			req   HTTPRequest // nil: TCP
			probe bool        // allowed as a probe; else the policy denies it
		}{
			{httpProbed, testRequest{"GET", "/healthz"}, true},
			{httpProbed, testRequest{"GET", "/ready"}, true},
			{httpProbed, testRequest{"HEAD", "/ready"}, true},
			{httpProbed, testRequest{"GET", "/"}, false},
			{httpProbed, testRequest{"POST", "/healthz"}, false},
			{httpProbed, testRequest{"GET", "/healthz/"}, false},
			{httpProbed, testRequest{"GET", "/healthzz"}, false},
			{httpProbed, testRequest{"GET", "/ready/../admin"}, false},
			{httpProbed, nil, false},
			{other, testRequest{"GET", "/healthz"}, false},
			{tcpProbed, nil, true},
			{tcpProbed, testRequest{"POST", "/grpc.health.v1.Health/Check"}, true},
		} {
			got := d.Authorize(Request{Port: tc.port, Client: public, HTTP: tc.req, DefaultPolicy: policy})
			want := Decision{Allow: true, Authorization: RuleProbe}
			if !tc.probe {
				want = Decision{Authorization: "default:" + policy}
			}
			if got.Allow != want.Allow || got.Authorization != want.Authorization {
				t.Errorf("%s port %d %v: %+v, want %+v", policy, tc.port, tc.req, got, want)
			}
		}
	}
}

func TestParseProbePaths(t *testing.T) {
	got, err := ParseProbePaths(" 8080:/healthz, 8080:/ready,,9090:/a:b/%20")
	want := []ProbePath{{8080, "/healthz"}, {8080, "/ready"}, {9090, "/a:b/%20"}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseProbePaths = %v, %v; want %v", got, err, want)
	}
	if got, err := ParseProbePaths(""); err != nil || got != nil {
		t.Errorf("ParseProbePaths(\"\") = %v, %v", got, err)
	}
	for _, bad := range []string{"8080", "8080:", "8080:healthz", "0:/healthz", "65536:/healthz", "x:/healthz",
		":/healthz", "8080:/a b", "8080:/healthz?x=1"} {
		if got, err := ParseProbePaths(bad); err == nil {
			t.Errorf("ParseProbePaths(%q) = %v, want an error", bad, got)
		}
	}
}

func FuzzParseProbePaths(f *testing.F) {
	for _, s := range []string{"", "8080:/healthz,8080:/ready", "1:/,65535:/x", "8080:/a:b", " 80 : /x "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParseProbePaths(s)
		if err != nil {
			return
		}
		for _, p := range ps {
			if p.Port == 0 || !strings.HasPrefix(p.Path, "/") || strings.ContainsAny(p.Path, " \t?,") {
				t.Fatalf("ParseProbePaths(%q) gave %+v", s, p)
			}
		}
	})
}

func TestDefaultClusterNetworks(t *testing.T) {
	d := NewDefault(DefaultOptions{ClusterNetworks: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}})
	for _, tc := range []struct {
		client string
		allow  bool
	}{{"100.64.3.4:1", true}, {"10.0.0.1:1", false}} {
		got := d.Authorize(Request{Port: 80, Client: netip.MustParseAddrPort(tc.client),
			DefaultPolicy: proxyconfig.PolicyClusterAuthenticated})
		if got.Allow != tc.allow {
			t.Errorf("%s: %+v", tc.client, got)
		}
	}
}

func BenchmarkDefault(b *testing.B) {
	d := NewDefault(DefaultOptions{ProbePaths: []ProbePath{{80, "/healthz"}, {80, "/ready"}},
		ProbePorts: []uint16{8081, 9090}})
	r := Request{Port: 80, Client: netip.MustParseAddrPort("10.1.2.3:4000"),
		Identity: "spiffe://cluster.local/ns/shop/sa/web", DefaultPolicy: proxyconfig.PolicyClusterAuthenticated}
	b.ReportAllocs()
	for b.Loop() {
		if !d.Authorize(r).Allow {
			b.Fatal("denied")
		}
	}
}
