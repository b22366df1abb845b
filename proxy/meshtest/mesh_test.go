package meshtest

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	idmtls "github.com/trellis-mesh/trellis/internal/identity/mtls"
	"github.com/trellis-mesh/trellis/internal/identity/server"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/proxy"
)

func TestMain(m *testing.M) {
	// The fake clientset cannot stream a watch's initial list (it sends no initial-events bookmark): the identity
	// service's informers must list, then watch. client-go reads its feature gates from the environment on first use.
	if err := os.Setenv("KUBE_FEATURE_WatchListClient", "false"); err != nil {
		panic(err)
	}
	goleak.VerifyTestMain(m,
		// klog's flush daemon starts with client-go and lives for the process.
		goleak.IgnoreTopFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
		// Idle connections of net/http clients wind down asynchronously.
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

const (
	trustDomain = "cluster.local"
	servingName = "identity.trellis-system.svc"
	namespace   = "shop"
	idClient    = "spiffe://cluster.local/ns/shop/sa/client"
	idWeb       = "spiffe://cluster.local/ns/shop/sa/web"
)

var testLog = func() *slog.Logger {
	if os.Getenv("TRELLIS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}()

// reviewer is the TokenReview API: tokens map to ServiceAccounts; a refused ServiceAccount's tokens do not
// authenticate.
type reviewer struct {
	mu      sync.Mutex
	tokens  map[string]string // token → "namespace:name"
	refused map[string]bool   // "namespace:name"
}

func (r *reviewer) Create(_ context.Context, tr *authenticationv1.TokenReview, _ metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := tr.DeepCopy()
	sa, ok := r.tokens[tr.Spec.Token]
	if !ok || r.refused[sa] {
		out.Status = authenticationv1.TokenReviewStatus{Error: "invalid bearer token"}
		return out, nil
	}
	out.Status = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences,
		User: authenticationv1.UserInfo{Username: "system:serviceaccount:" + sa}}
	return out, nil
}

func (r *reviewer) refuse(sa string, refuse bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refused[namespace+":"+sa] = refuse
}

// identityService is the real identity service with its Secrets in a fake clientset.
type identityService struct {
	addr     string
	root     *identitytest.CA
	issuer   *identitytest.CA
	client   *fake.Clientset
	reviewer *reviewer
	reg      *prometheus.Registry
	dir      string
}

// The issuer and serving Secrets live in different namespaces: the fake clientset ignores the field selectors the
// service watches them by.
var (
	issuerSecret  = types.NamespacedName{Namespace: "trellis-system", Name: "trellis-identity-issuer"}
	servingSecret = types.NamespacedName{Namespace: "trellis-serving", Name: "trellis-identity-tls"}
)

func startIdentity(t *testing.T, leafLifetime time.Duration) *identityService {
	t.Helper()
	root := identitytest.NewRoot(t, "trust anchor")
	s := &identityService{root: root, issuer: root.NewIntermediate(t, "issuer 1"), reg: prometheus.NewRegistry(),
		reviewer: &reviewer{tokens: map[string]string{}, refused: map[string]bool{}}, dir: t.TempDir()}
	s.client = fake.NewClientset(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: issuerSecret.Namespace, Name: issuerSecret.Name},
			Type: corev1.SecretTypeTLS, Data: s.issuer.IssuerSecretData(t)},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: servingSecret.Namespace, Name: servingSecret.Name},
			Type: corev1.SecretTypeTLS, Data: identitytest.TLSSecretData(t, root.ServingCert(t, servingName), root.Cert)},
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	srv, err := server.New(server.Options{
		Client:        s.client,
		TokenReviewer: s.reviewer,
		TrustDomain:   trustDomain,
		IssuerSecret:  issuerSecret,
		ServingSecret: servingSecret,
		Listener:      ln,
		LeafLifetime:  leafLifetime,
		Registerer:    s.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("identity service: %v", err)
		}
	})
	eventually(t, 20*time.Second, "identity service Secrets loaded", func() bool { return srv.ReadyCheck(nil) == nil })
	return s
}

// rotateIssuer replaces the issuer Secret with a new intermediate under the same trust anchor, as cert-manager does.
func (s *identityService) rotateIssuer(t *testing.T, name string) *identitytest.CA {
	t.Helper()
	next := s.root.NewIntermediate(t, name)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: issuerSecret.Namespace, Name: issuerSecret.Name},
		Type: corev1.SecretTypeTLS, Data: next.IssuerSecretData(t)}
	if _, err := s.client.CoreV1().Secrets(issuerSecret.Namespace).Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return next
}

// workloadFiles writes a projected-token-like file for ServiceAccount sa and the trust bundle, and returns their
// paths.
func (s *identityService) workloadFiles(t *testing.T, sa string) (tokenFile, bundleFile string) {
	t.Helper()
	seg := func(v string) string { return base64.RawURLEncoding.EncodeToString([]byte(v)) }
	token := seg(`{"alg":"RS256"}`) + "." + seg(`{"sub":"system:serviceaccount:shop:`+sa+`"}`) + "." + seg("signature")
	s.reviewer.mu.Lock()
	s.reviewer.tokens[token] = namespace + ":" + sa
	s.reviewer.mu.Unlock()
	tokenFile, bundleFile = filepath.Join(s.dir, sa+".token"), filepath.Join(s.dir, "ca-bundle.crt")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bundleFile, identitytest.PEMCerts(s.root.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	return tokenFile, bundleFile
}

// multiListener accepts on several loopback listeners; a connection's local address tells which one took it, as
// SO_ORIGINAL_DST tells a redirected connection's destination.
type multiListener struct {
	lns    []net.Listener
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

func newMultiListener(t *testing.T, ips ...string) *multiListener {
	t.Helper()
	m := &multiListener{conns: make(chan net.Conn), closed: make(chan struct{})}
	for _, ip := range ips {
		ln, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		m.lns = append(m.lns, ln)
		m.wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				select {
				case m.conns <- c:
				case <-m.closed:
					c.Close()
					return
				}
			}
		})
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.closed:
		return nil, net.ErrClosed
	}
}

func (m *multiListener) Close() error {
	m.once.Do(func() {
		close(m.closed)
		for _, ln := range m.lns {
			ln.Close()
		}
		m.wg.Wait()
	})
	return nil
}

func (m *multiListener) Addr() net.Addr { return m.lns[0].Addr() }

// addr returns the address of the i-th listener.
func (m *multiListener) addr(i int) string { return m.lns[i].Addr().String() }

// runningProxy is a proxy started with proxy.Run.
type runningProxy struct {
	out, in *multiListener
	admin   string
	stop    func()
}

// startProxy runs a proxy for ServiceAccount sa with the configuration doc. routes maps the local address a
// connection arrived on (outbound or inbound listener) to its original destination.
func startProxy(t *testing.T, ids *identityService, sa, doc string, out, in *multiListener,
	routes map[netip.Addr]netip.AddrPort) *runningProxy {
	t.Helper()
	cfgDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tokenFile, bundleFile := ids.workloadFiles(t, sa)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(ctx, proxy.RunOptions{
			ConfigDir:          cfgDir,
			PollInterval:       50 * time.Millisecond,
			GracePeriod:        5 * time.Second,
			Log:                testLog.With("proxy", sa),
			IdentityAddr:       ids.addr,
			IdentityServerName: servingName,
			TrustDomain:        trustDomain,
			PodNamespace:       namespace,
			ServiceAccount:     sa,
			PodName:            sa + "-0",
			TokenFile:          tokenFile,
			TrustBundleFile:    bundleFile,
			OutboundListener:   out,
			InboundListener:    in,
			AdminListener:      adminLn,
			OriginalDst: func(c net.Conn) (netip.AddrPort, error) {
				la := c.LocalAddr().(*net.TCPAddr).AddrPort()
				if dst, ok := routes[la.Addr()]; ok {
					return dst, nil
				}
				return la, errors.New("no route")
			},
		})
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("proxy %s: %v", sa, err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("proxy %s did not stop", sa)
			}
		})
	}
	t.Cleanup(stop)
	return &runningProxy{out: out, in: in, admin: "http://" + adminLn.Addr().String(), stop: stop}
}

// get returns the status and body of an admin endpoint.
func (p *runningProxy) get(t *testing.T, path string) (int, string) {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(p.admin + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric sums the samples of a series in the proxy's /metrics whose labels include every name="value" given.
func (p *runningProxy) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	_, body := p.get(t, "/metrics")
	return sumSamples(body, name, labels...)
}

func sumSamples(text, name string, labels ...string) float64 {
	total := 0.0
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(line, l)
		}
		if !match {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			total += v
		}
	}
	return total
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(within); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// app serves HTTP/1.1 requests (answering with what it saw) and gRPC (the health service) on one port.
func app(t *testing.T) string {
	t.Helper()
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d", r.Proto, r.URL.Path, len(body))
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); gs.Stop() })
	return ln.Addr().String()
}

func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// mesh is a client proxy and a server proxy with their applications: clients send HTTP and gRPC to httpVia and TCP
// to tcpVia on the client proxy's outbound side, which routes them to the server proxy over mesh TLS.
type mesh struct {
	client, server  *runningProxy
	httpVia, tcpVia string
}

func startMesh(t *testing.T, ids *identityService, clientDefaults string) *mesh {
	t.Helper()
	appAddr, echoAddr := app(t), echo(t)
	// The server proxy: two inbound addresses standing for the pod's two ports.
	serverIn := newMultiListener(t, "127.0.0.11", "127.0.0.12")
	serverOut := newMultiListener(t, "127.0.0.13")
	podIP := netip.MustParseAddr("127.0.0.2")
	server := startProxy(t, ids, "web", `{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "server"}`,
		serverOut, serverIn, map[netip.Addr]netip.AddrPort{
			netip.MustParseAddr("127.0.0.11"): netip.AddrPortFrom(podIP, netip.MustParseAddrPort(appAddr).Port()),
			netip.MustParseAddr("127.0.0.12"): netip.AddrPortFrom(podIP, netip.MustParseAddrPort(echoAddr).Port()),
		})
	clientOut := newMultiListener(t, "127.0.0.21", "127.0.0.22")
	clientIn := newMultiListener(t, "127.0.0.23")
	doc := fmt.Sprintf(`{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "client", %s "services": [
	  {"name": "web", "namespace": "shop", "clusterIPs": ["10.96.0.1"], "port": 80,
	   "backends": [{"name": "web", "endpoints": [{"address": %q, "identity": %q}]}]},
	  {"name": "echo", "namespace": "shop", "clusterIPs": ["10.96.0.1"], "port": 81, "protocol": "opaque",
	   "backends": [{"name": "echo", "endpoints": [{"address": %q, "identity": %q}]}]}]}`,
		clientDefaults, serverIn.addr(0), idWeb, serverIn.addr(1), idWeb)
	client := startProxy(t, ids, "client", doc, clientOut, clientIn, map[netip.Addr]netip.AddrPort{
		netip.MustParseAddr("127.0.0.21"): netip.MustParseAddrPort("10.96.0.1:80"),
		netip.MustParseAddr("127.0.0.22"): netip.MustParseAddrPort("10.96.0.1:81"),
	})
	for _, p := range []*runningProxy{server, client} {
		eventually(t, 30*time.Second, "proxy ready", func() bool { code, _ := p.get(t, "/ready"); return code == 200 })
	}
	return &mesh{client: client, server: server, httpVia: clientOut.addr(0), tcpVia: clientOut.addr(1)}
}

// TestRotationUnderLoad drives HTTP/1.1, gRPC and opaque TCP through two proxies for 20 seconds while their 4-second
// certificates renew several times and the identity issuer is rotated twice: no request may fail. HTTP and gRPC run
// in rounds separated by pauses longer than the client proxy's idle timeout, so the multiplexed mesh connection is
// re-established with the certificates of the moment; every TCP connection is a new mesh connection.
func TestRotationUnderLoad(t *testing.T) {
	const (
		duration     = 20 * time.Second
		leafLifetime = 4 * time.Second
		maxOps       = 4000 // bound on the load; the workers' pace gives about 3000 in 20 s
	)
	ids := startIdentity(t, leafLifetime)
	m := startMesh(t, ids, `"defaults": {"httpIdleTimeout": "400ms"},`)

	var (
		ops, failures         atomic.Int64
		httpOps, grpcOps, tcp atomic.Int64
		errMu                 sync.Mutex
		errs                  []string
	)
	fail := func(kind string, err error) {
		failures.Add(1)
		errMu.Lock()
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf("%s at %s: %v", kind, time.Now().Format("15:04:05.000"), err))
		}
		errMu.Unlock()
	}
	start := time.Now()
	running := func() bool { return time.Since(start) < duration && ops.Load() < maxOps }
	// pace returns a function that sleeps until the next of rate operations per second is due.
	pace := func(rate int) func() {
		next := time.Now()
		return func() {
			next = next.Add(time.Second / time.Duration(rate))
			time.Sleep(time.Until(next))
		}
	}
	// inRound reports whether HTTP and gRPC send now: 1.3 s of load, then 0.7 s of silence.
	inRound := func() bool { return time.Since(start)%(2*time.Second) < 1300*time.Millisecond }

	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			tr := &http.Transport{DisableCompression: true}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			wait := pace(60)
			for running() {
				wait()
				if !inRound() {
					continue
				}
				ops.Add(1)
				resp, err := c.Get("http://" + m.httpVia + "/rotation")
				if err != nil {
					fail("HTTP", err)
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(b) != "HTTP/1.1 /rotation 0" {
					fail("HTTP", fmt.Errorf("%d %q %s", resp.StatusCode, b, resp.Header.Get("Trellis-Proxy-Error")))
					continue
				}
				httpOps.Add(1)
			}
		})
	}
	wg.Go(func() {
		cc, err := grpc.NewClient("passthrough:///"+m.httpVia, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fail("gRPC", err)
			return
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		wait := pace(40)
		for running() {
			wait()
			if !inRound() {
				continue
			}
			ops.Add(1)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			// WaitForReady: the client proxy closes idle client connections too; gRPC reconnects to it.
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
			cancel()
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				fail("gRPC", fmt.Errorf("status %v: %w", resp.GetStatus(), err))
				continue
			}
			grpcOps.Add(1)
		}
	})
	wg.Go(func() {
		msg := strings.Repeat("t", 1024)
		wait := pace(50)
		for running() {
			wait()
			ops.Add(1)
			got, err := roundTripTCP(m.tcpVia, msg)
			if err != nil || got != msg {
				fail("TCP", fmt.Errorf("echoed %d bytes: %w", len(got), err))
				continue
			}
			tcp.Add(1)
		}
	})
	// Rotate the issuer twice while the load runs.
	issuers := []*identitytest.CA{ids.issuer}
	for _, at := range []time.Duration{6 * time.Second, 13 * time.Second} {
		time.Sleep(time.Until(start.Add(at)))
		if !running() {
			break
		}
		issuers = append(issuers, ids.rotateIssuer(t, fmt.Sprintf("issuer %d", len(issuers)+1)))
	}
	wg.Wait()
	elapsed := time.Since(start)

	t.Logf("%d operations in %v (HTTP %d, gRPC %d, TCP %d), %d failed", ops.Load(), elapsed.Round(time.Millisecond),
		httpOps.Load(), grpcOps.Load(), tcp.Load(), failures.Load())
	if failures.Load() != 0 {
		t.Errorf("%d operations failed: %s", failures.Load(), strings.Join(errs, "; "))
	}
	if httpOps.Load() < 20 || grpcOps.Load() < 10 || tcp.Load() < 20 {
		t.Errorf("too little load to judge: HTTP %d, gRPC %d, TCP %d", httpOps.Load(), grpcOps.Load(), tcp.Load())
	}

	// Both proxies renewed several times, from both issuers, and the service saw the issuer rotate twice.
	issued := sumSamples(gather(t, ids.reg), "identity_certify_total", `result="issued"`)
	loads := sumSamples(gather(t, ids.reg), "identity_secret_load_total", `secret="issuer"`, `result="loaded"`)
	t.Logf("identity service: %v certificates issued, issuer loaded %v times", issued, loads)
	if want := float64(len(issuers)); loads != want {
		t.Errorf("issuer loaded %v times, want %v", loads, want)
	}
	for name, p := range map[string]*runningProxy{"client": m.client, "server": m.server} {
		renewals := p.metric(t, "identity_cert_refresh_total", `result="success"`)
		t.Logf("%s proxy: %v certificates, %v handshakes (in %v, out %v)", name, renewals,
			p.metric(t, "mtls_handshake_total", `result="success"`),
			p.metric(t, "mtls_handshake_total", `direction="inbound"`, `result="success"`),
			p.metric(t, "mtls_handshake_total", `direction="outbound"`, `result="success"`))
		if minimum := float64(int(elapsed/(leafLifetime*3/4))) - 1; renewals < minimum {
			t.Errorf("%s proxy obtained %v certificates in %v, want at least %v", name, renewals, elapsed, minimum)
		}
		if n := p.metric(t, "identity_cert_refresh_total", `result="failure"`); n != 0 {
			t.Errorf("%s proxy: %v failed renewals", name, n)
		}
		all := p.metric(t, "mtls_handshake_total")
		if ok := p.metric(t, "mtls_handshake_total", `result="success"`); ok != all {
			t.Errorf("%s proxy: %v of %v mesh handshakes failed", name, all-ok, all)
		}
		if exp := p.metric(t, "identity_cert_expiration_timestamp_seconds"); exp < float64(time.Now().Unix()) {
			t.Errorf("%s proxy: certificate expiry %v is in the past", name, exp)
		}
	}
	// Every TCP connection is a handshake; the HTTP/2 connection is re-established after each pause between rounds.
	rounds := int64(elapsed / (2 * time.Second))
	if n := m.server.metric(t, "mtls_handshake_total", `direction="inbound"`, `result="success"`); n < float64(tcp.Load()+rounds-2) {
		t.Errorf("server proxy: %v inbound mesh handshakes for %d TCP connections and %d rounds", n, tcp.Load(), rounds)
	}
	in := m.server.metric(t, "request_total", `direction="inbound"`, `client_id="`+idClient+`"`, `tls="true"`)
	if want := float64(httpOps.Load() + grpcOps.Load()); in != want {
		t.Errorf("server proxy counted %v inbound requests from %s over mesh TLS, want %v", in, idClient, want)
	}

	// The server proxy now presents a certificate from the last issuer.
	last := issuers[len(issuers)-1]
	probe := idmtls.Static(last.SVID(t, spiffe.MustParse("spiffe://cluster.local/ns/shop/sa/probe")),
		identitytest.Pool(ids.root.Cert))
	eventually(t, 10*time.Second, "a server certificate from the last issuer", func() bool {
		conn, err := tls.Dial("tcp", m.server.in.addr(0), idmtls.ClientConfig(probe, spiffe.MustParse(idWeb), "trellis/1"))
		if err != nil {
			t.Fatalf("dialing the server proxy as a meshed client: %v", err)
		}
		defer conn.Close()
		chain := conn.ConnectionState().PeerCertificates
		return conn.ConnectionState().Version == tls.VersionTLS13 && len(chain) > 1 && chain[1].Equal(last.Cert)
	})
}

// roundTripTCP sends msg on a new connection to addr, half-closes and returns what comes back.
func roundTripTCP(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(bufio.NewReader(c))
	return string(b), err
}

func gather(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			b.WriteString(mf.GetName() + "{")
			for _, l := range m.GetLabel() {
				fmt.Fprintf(&b, "%s=%q,", l.GetName(), l.GetValue())
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			fmt.Fprintf(&b, "} %v\n", v)
		}
	}
	return b.String()
}

// TestReadyWaitsForCertificate checks that /ready fails until the proxy holds a workload certificate, that the
// refused requests are counted, and that the proxy becomes ready once the identity service accepts its token.
func TestReadyWaitsForCertificate(t *testing.T) {
	ids := startIdentity(t, time.Hour)
	ids.reviewer.refuse("late", true)
	p := startProxy(t, ids, "late", `{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "1"}`,
		newMultiListener(t, "127.0.0.31"), newMultiListener(t, "127.0.0.32"), nil)
	eventually(t, 10*time.Second, "a refused certificate request", func() bool {
		return p.metric(t, "identity_cert_refresh_total", `result="failure"`) >= 1
	})
	if code, body := p.get(t, "/ready"); code != 503 || !strings.Contains(body, "no workload certificate yet") {
		t.Fatalf("/ready = %d %q before any certificate", code, body)
	}
	ids.reviewer.refuse("late", false)
	eventually(t, 15*time.Second, "readiness", func() bool { code, _ := p.get(t, "/ready"); return code == 200 })
	if exp := p.metric(t, "identity_cert_expiration_timestamp_seconds"); exp < float64(time.Now().Add(50*time.Minute).Unix()) {
		t.Errorf("identity_cert_expiration_timestamp_seconds = %v", exp)
	}
	if n := sumSamples(gather(t, ids.reg), "identity_certify_total", `reason="`+string(identity.ReasonInvalidToken)+`"`); n < 1 {
		t.Errorf("the identity service did not count the refusals: %v", n)
	}
}
