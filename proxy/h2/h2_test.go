package h2

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/netip"
	"testing"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/proxy/balance"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestMeshHost checks that the mesh transport's pool key round-trips an endpoint's address and identity, and that
// the same address with two identities gives two keys.
func TestMeshHost(t *testing.T) {
	for _, tc := range []struct{ addr, identity string }{
		{"10.1.2.3:8080", "spiffe://cluster.local/ns/shop/sa/web"},
		{"[fd00::1:2]:443", "spiffe://cluster.local/ns/a/sa/b"},
		{"[::ffff:10.0.0.1]:80", "spiffe://example.org/x"},
	} {
		ap := netip.MustParseAddrPort(tc.addr)
		host := encodeMeshHost(ap, tc.identity)
		ep, err := parseMeshHost(host)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		if ep.Addr != netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) || ep.Identity != tc.identity {
			t.Errorf("%s → %v %q", host, ep.Addr, ep.Identity)
		}
		if encodeMeshHost(ap, tc.identity+"2") == host {
			t.Errorf("two identities share the key %s", host)
		}
	}
	for _, bad := range []string{"10.0.0.1:80", "zz.0a000001.mesh:80", "61.0a000001.other:80", "61.0a0000.mesh:80",
		"61.0a000001.mesh:http"} {
		if _, err := parseMeshHost(bad); err == nil {
			t.Errorf("parseMeshHost(%q) accepted", bad)
		}
	}
}

func TestRemoveHopByHop(t *testing.T) {
	h := http.Header{"Connection": {"close, X-Hop"}, "X-Hop": {"1"}, "Keep-Alive": {"timeout=5"},
		"Transfer-Encoding": {"chunked"}, "Upgrade": {"x"}, "Content-Type": {"text/plain"}}
	RemoveHopByHop(h)
	if len(h) != 1 || h.Get("Content-Type") != "text/plain" {
		t.Fatalf("left %v", h)
	}
}

func BenchmarkMeshHost(b *testing.B) {
	s := NewServer(Options{Connector: nil, Mesh: nopMesh{}})
	defer s.Shutdown(b.Context())
	ep := balance.NewEndpoint(netip.MustParseAddrPort("10.1.2.3:8080"), "spiffe://cluster.local/ns/shop/sa/web", "")
	b.ReportAllocs()
	for b.Loop() {
		_ = s.meshHost(ep)
	}
}

type nopMesh struct{}

func (nopMesh) ConnectTLS(context.Context, *balance.Endpoint, string) (*tls.Conn, error) {
	return nil, errors.New("no dialing in this test")
}
