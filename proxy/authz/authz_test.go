package authz

import (
	"net/netip"
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
		// Kubelet probes: always allowed.
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
	d := NewDefault(DefaultOptions{ProbePorts: []uint16{8081, 9090}})
	r := Request{Port: 80, Client: netip.MustParseAddrPort("10.1.2.3:4000"),
		Identity: "spiffe://cluster.local/ns/shop/sa/web", DefaultPolicy: proxyconfig.PolicyClusterAuthenticated}
	b.ReportAllocs()
	for b.Loop() {
		if !d.Authorize(r).Allow {
			b.Fatal("denied")
		}
	}
}
