package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	"github.com/trellis-mesh/trellis/internal/identity/mtls"
	"github.com/trellis-mesh/trellis/internal/identity/workload"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// startWorkload runs a workload.Manager for ServiceAccount sa against the identity service at addr, with a real
// projected-style token file and a trust bundle file, and returns it once it holds a first certificate.
func startWorkload(t *testing.T, wg *sync.WaitGroup, ctx context.Context, ns, sa, addr string, bundle []byte) (*workload.Manager, *prometheus.Registry) {
	t.Helper()
	dir := t.TempDir()
	tokenFile, bundleFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca-bundle.crt")
	if err := os.WriteFile(tokenFile, []byte(requestToken(t, ns, sa, identity.Audience, nil)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bundleFile, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, err := workload.New(workload.Options{
		ID:              saID(t, ns, sa),
		Addr:            addr,
		ServerName:      servingName,
		TokenFile:       tokenFile,
		TrustBundleFile: bundleFile,
		MinBackoff:      100 * time.Millisecond,
		MaxBackoff:      time.Second,
		Registerer:      reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		if err := m.Run(ctx); err != nil {
			t.Errorf("workload %s: %v", sa, err)
		}
	})
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := m.WaitReady(waitCtx); err != nil {
		t.Fatalf("workload %s got no certificate: %v", sa, err)
	}
	return m, reg
}

// meshServer accepts meshed connections with mtls.ServerConfig and answers each with the client identity it
// verified and the negotiated protocol.
func meshServer(t *testing.T, ctx context.Context, wg *sync.WaitGroup, creds mtls.Credentials) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := mtls.ServerConfig(creds)
	wg.Go(func() {
		<-ctx.Done()
		ln.Close()
	})
	wg.Go(func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				conn := tls.Server(raw, cfg)
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				if err := conn.Handshake(); err != nil {
					return
				}
				id, _ := mtls.PeerID(conn.ConnectionState())
				fmt.Fprintf(conn, "%s %s\n", id, conn.ConnectionState().NegotiatedProtocol)
			})
		}
	})
	return ln.Addr().String()
}

// dialMesh connects with cfg and returns what the server says it saw, and the server's verified identity.
func dialMesh(addr string, cfg *tls.Config) (seenByServer string, server spiffe.ID, serverSerial string, err error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return "", spiffe.ID{}, "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", spiffe.ID{}, "", err
	}
	cs := conn.ConnectionState()
	id, _ := mtls.PeerID(cs)
	return strings.TrimSpace(line), id, cs.PeerCertificates[0].SerialNumber.Text(16), nil
}

// TestEndToEnd runs the identity service over real sockets, two workloads that obtain and renew certificates from
// it, and mTLS between them.
func TestEndToEnd(t *testing.T) {
	needKube(t)
	ns := newNamespace(t)
	createServiceAccount(t, ns, "a")
	createServiceAccount(t, ns, "b")
	root := identitytest.NewRoot(t, "trust anchor")
	bundle := identitytest.PEMCerts(root.Cert)
	// Warm the API client's connection so that its goroutines predate the leak baseline.
	if _, err := kube.client.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	baseline := goleak.IgnoreCurrent()

	const lifetime = 4 * time.Second // renewal after ~2.8s
	srv := startServer(t, ns, root.NewIntermediate(t, "identity issuer"), root, func(o *Options) { o.LeafLifetime = lifetime })

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			wg.Wait()
		}
	}
	defer stop()

	a, regA := startWorkload(t, &wg, ctx, ns, "a", srv.addr, bundle)
	b, _ := startWorkload(t, &wg, ctx, ns, "b", srv.addr, bundle)
	idA, idB := saID(t, ns, "a"), saID(t, ns, "b")
	if got := time.Until(a.Certificate().Leaf.NotAfter); got > lifetime {
		t.Fatalf("leaf lives %v, configured %v", got, lifetime)
	}

	t.Run("renewal", func(t *testing.T) {
		first := a.Certificate()
		eventually(t, "a renewed certificate", func() bool { return a.Certificate() != first })
		if !a.Ready() || a.Certificate().Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
			t.Fatal("renewal did not install a new certificate")
		}
		fams := identitytest.Families(t, regA)
		if !fams[workload.MetricCertRefreshTotal] || !fams[workload.MetricCertExpirationTimestamp] {
			t.Fatalf("workload metrics missing: %v", fams)
		}
	})

	addrB := meshServer(t, ctx, &wg, b)

	t.Run("mutual TLS with identities", func(t *testing.T) {
		seen, server, _, err := dialMesh(addrB, mtls.ClientConfig(a, idB, mtls.ALPNHTTP2))
		if err != nil {
			t.Fatal(err)
		}
		if seen != idA.String()+" "+mtls.ALPNHTTP2 {
			t.Fatalf("server saw %q, want client %s over h2", seen, idA)
		}
		if server != idB {
			t.Fatalf("client saw server %v, want %v", server, idB)
		}
	})

	t.Run("new handshakes use the renewed certificate", func(t *testing.T) {
		current := b.Certificate()
		eventually(t, "b to renew", func() bool { return b.Certificate() != current })
		_, _, serial, err := dialMesh(addrB, mtls.ClientConfig(a, idB))
		if err != nil {
			t.Fatal(err)
		}
		if old := current.Leaf.SerialNumber.Text(16); serial == old {
			t.Fatalf("server still presented the certificate %s it held before renewal", old)
		}
	})

	t.Run("server with another identity than expected is refused", func(t *testing.T) {
		if _, _, _, err := dialMesh(addrB, mtls.ClientConfig(a, saID(t, ns, "c"))); err == nil ||
			!strings.Contains(err.Error(), "not the expected") {
			t.Fatalf("dial = %v, want an identity mismatch", err)
		}
	})

	t.Run("client from another trust anchor is refused", func(t *testing.T) {
		foreign := identitytest.NewRoot(t, "foreign anchor").NewIntermediate(t, "foreign issuer")
		impostor := mtls.Static(foreign.SVID(t, idA), a.Roots()) // claims a's identity, trusts our anchor
		if seen, _, _, err := dialMesh(addrB, mtls.ClientConfig(impostor, idB)); err == nil {
			t.Fatalf("server accepted a client certificate from a foreign anchor (saw %q)", seen)
		}
	})

	t.Run("server from another trust anchor is refused", func(t *testing.T) {
		foreign := identitytest.NewRoot(t, "foreign anchor").NewIntermediate(t, "foreign issuer")
		addr := meshServer(t, ctx, &wg, mtls.Static(foreign.SVID(t, idB), b.Roots()))
		if _, _, _, err := dialMesh(addr, mtls.ClientConfig(a, idB)); err == nil ||
			!strings.Contains(err.Error(), "unknown authority") {
			t.Fatalf("dial = %v, want an unknown authority", err)
		}
	})

	if got := certifyCount(t, srv.Server, identity.ReasonIssued); got < 4 {
		t.Fatalf("identity_certify_total{issued} = %v, want at least 4 (two workloads, renewed)", got)
	}

	// Everything this test started stops: workloads, mesh servers, the identity service and its watches.
	stop()
	srv.stop()
	goleak.VerifyNone(t, baseline,
		// Connections of the shared API client may come and go.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("golang.org/x/net/http2.(*ClientConn).readLoop"),
	)
}
