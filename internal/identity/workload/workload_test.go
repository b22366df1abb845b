package workload

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var workloadID = spiffe.MustParse("spiffe://cluster.local/ns/shop/sa/web")

const goodToken = "header.payload.signature"

// fakeService is an identity service stand-in: it checks the bearer token against a wanted value, runs the real CSR
// checks, and signs with a test issuer on the test's clock. tamper, when set, rewrites the chain it returns.
type fakeService struct {
	t        *testing.T
	issuer   *identitytest.CA
	clock    *clocktesting.FakeClock
	lifetime time.Duration
	token    atomic.Value // string
	requests atomic.Int32
	tamper   atomic.Value // func([]byte) []byte
	srv      *httptest.Server
}

func newFakeService(t *testing.T, root *identitytest.CA, clk *clocktesting.FakeClock) *fakeService {
	f := &fakeService{t: t, issuer: root.NewIntermediate(t, "issuer"), clock: clk, lifetime: time.Hour}
	f.token.Store(goodToken)
	f.tamper.Store(func(b []byte) []byte { return b })
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{*root.ServingCert(t, "identity.test")}}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeService) serve(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	refuse := func(err error) {
		var e *identity.Error
		if !errors.As(err, &e) {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(e.Reason.HTTPStatus())
		_ = json.NewEncoder(w).Encode(identity.ErrorResponse{Reason: e.Reason, Message: e.Message})
	}
	token, err := identity.ParseBearer(r.Header.Get("Authorization"))
	if err != nil {
		refuse(err)
		return
	}
	if token != f.token.Load().(string) {
		refuse(identity.Errorf(identity.ReasonInvalidToken, "unknown token"))
		return
	}
	req, err := identity.DecodeRequest(r.Body)
	if err != nil {
		refuse(err)
		return
	}
	csr, id, err := identity.ParseCSR([]byte(req.CSR))
	if err != nil {
		refuse(err)
		return
	}
	now := f.clock.Now()
	tmpl := &x509.Certificate{
		SerialNumber: bigSerial(f.requests.Load()),
		NotBefore:    now, NotAfter: now.Add(f.lifetime),
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(nil, tmpl, f.issuer.Cert, csr.PublicKey, f.issuer.Key)
	if err != nil {
		f.t.Error(err)
		return
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), identitytest.PEMCerts(f.issuer.Chain()...)...)
	chain = f.tamper.Load().(func([]byte) []byte)(chain)
	_ = json.NewEncoder(w).Encode(identity.CertifyResponse{CertificateChain: string(chain)})
}

// files lays out a token file and a trust bundle the way the kubelet does: the bundle is a symlink through ..data
// to a timestamped directory, replaced atomically by writeBundle.
type files struct {
	dir, token, bundleDir string
	n                     int
}

func newFiles(t *testing.T) *files {
	dir := t.TempDir()
	f := &files{dir: dir, token: filepath.Join(dir, "token"), bundleDir: filepath.Join(dir, "trust")}
	if err := os.Mkdir(f.bundleDir, 0o755); err != nil {
		t.Fatal(err)
	}
	f.writeToken(t, goodToken)
	return f
}

func (f *files) bundle() string { return filepath.Join(f.bundleDir, "ca-bundle.crt") }

func (f *files) writeToken(t *testing.T, token string) {
	t.Helper()
	if err := os.WriteFile(f.token, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f *files) writeBundle(t *testing.T, content []byte) {
	t.Helper()
	f.n++
	ts := fmt.Sprintf("..2026_01_01_00_00_%02d", f.n)
	if err := os.Mkdir(filepath.Join(f.bundleDir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.bundleDir, ts, "ca-bundle.crt"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(f.bundleDir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(f.bundleDir, "..data")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(f.bundle()); os.IsNotExist(err) {
		if err := os.Symlink(filepath.Join("..data", "ca-bundle.crt"), f.bundle()); err != nil {
			t.Fatal(err)
		}
	}
}

type fixture struct {
	t     *testing.T
	root  *identitytest.CA
	clock *clocktesting.FakeClock
	svc   *fakeService
	files *files
	reg   *prometheus.Registry
	m     *Manager
	stop  func()
}

// start builds a Manager against a fake service and runs it; the jitter source returns r.
func start(t *testing.T, r float64, tweak func(*Options)) *fixture {
	t.Helper()
	fx := newFixture(t, r, tweak)
	fx.run(t)
	return fx
}

// newFixture builds a Manager against a fake service without running it.
func newFixture(t *testing.T, r float64, tweak func(*Options)) *fixture {
	t.Helper()
	fx := &fixture{t: t, root: identitytest.NewRoot(t, "anchor"), clock: clocktesting.NewFakeClock(time.Now()), reg: prometheus.NewRegistry()}
	fx.svc = newFakeService(t, fx.root, fx.clock)
	fx.files = newFiles(t)
	fx.files.writeBundle(t, identitytest.PEMCerts(fx.root.Cert))
	opts := Options{
		ID:                 workloadID,
		Addr:               fx.svc.srv.Listener.Addr().String(),
		ServerName:         "identity.test",
		TokenFile:          fx.files.token,
		TrustBundleFile:    fx.files.bundle(),
		BundlePollInterval: 10 * time.Hour,
		Clock:              fx.clock,
		Rand:               func() float64 { return r },
		Registerer:         fx.reg,
	}
	if tweak != nil {
		tweak(&opts)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	fx.m = m
	return fx
}

func (fx *fixture) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fx.m.Run(ctx) }()
	var once sync.Once
	fx.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(fx.stop)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitTimers waits until the renewal loop and the bundle poller both sleep on the fake clock.
func (fx *fixture) waitTimers(t *testing.T) {
	t.Helper()
	waitFor(t, "both loops to wait on the clock", func() bool { return fx.clock.Waiters() == 2 })
}

func (fx *fixture) count(result string) float64 {
	return identitytest.Value(fx.t, fx.m.refresh.WithLabelValues(result))
}

func TestFirstCertificate(t *testing.T) {
	fx := start(t, 0.5, nil)
	if err := fx.m.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !fx.m.Ready() {
		t.Fatal("Ready() false after WaitReady")
	}
	cert := fx.m.Certificate()
	if cert == nil || cert.Leaf == nil {
		t.Fatal("no certificate")
	}
	if cert.PrivateKey != fx.m.key {
		t.Fatal("certificate does not use the in-memory key")
	}
	if id, err := spiffe.FromCertificate(cert.Leaf); err != nil || id != workloadID {
		t.Fatalf("certificate identity %v, %v", id, err)
	}
	if len(cert.Certificate) != 2 {
		t.Fatalf("chain has %d certificates, want leaf and issuer", len(cert.Certificate))
	}
	if got := identitytest.Value(t, fx.m.expiry); got != float64(cert.Leaf.NotAfter.Unix()) {
		t.Fatalf("%s = %v, want %v", MetricCertExpirationTimestamp, got, cert.Leaf.NotAfter.Unix())
	}
	fams := identitytest.Families(t, fx.reg)
	for _, name := range []string{MetricCertRefreshTotal, MetricCertExpirationTimestamp, MetricTrustBundleLoadTotal} {
		if !fams[name] {
			t.Fatalf("metric %s not registered (have %v)", name, fams)
		}
	}
	if fx.count("success") != 1 {
		t.Fatalf("refresh success = %v", fx.count("success"))
	}
	// The key never touches the disk: nothing but the test's own files is in the working directories.
	entries, _ := os.ReadDir(fx.files.dir)
	for _, e := range entries {
		if e.Name() != "token" && e.Name() != "trust" {
			t.Fatalf("unexpected file %s", e.Name())
		}
	}
}

// TestRenewal checks renewal at 70% of the lifetime and that the new certificate replaces the old one.
func TestRenewal(t *testing.T) {
	fx := start(t, 0.5, nil) // r = 0.5: no jitter offset, renewal exactly at 70% of one hour = 42m
	if err := fx.m.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	first := fx.m.Certificate()
	fx.waitTimers(t)

	fx.clock.Step(41 * time.Minute)
	time.Sleep(50 * time.Millisecond)
	if n := fx.svc.requests.Load(); n != 1 {
		t.Fatalf("%d requests before 70%% of the lifetime, want 1", n)
	}
	fx.clock.Step(time.Minute + time.Second)
	waitFor(t, "renewal", func() bool { return fx.count("success") == 2 })
	second := fx.m.Certificate()
	if second == first || second.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("certificate not replaced after renewal")
	}
	if second.PrivateKey != first.PrivateKey {
		t.Fatal("renewal changed the key")
	}
}

// TestBackoffAndTokenReread: a refused token is retried with backoff, and the next attempt reads the token file
// again, so a rotated token is picked up without a restart.
func TestBackoffAndTokenReread(t *testing.T) {
	fx := start(t, 0.999, func(o *Options) {
		o.MinBackoff, o.MaxBackoff = time.Second, 4*time.Second
	})
	if err := fx.m.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	fx.svc.token.Store("rotated.by.kubelet") // the mounted token is now stale
	// Trigger renewal immediately, then expect failures with growing delays: ~1s, ~2s, ~4s (capped).
	fx.waitTimers(t)
	fx.clock.Step(time.Hour) // past the renewal point (r≈1 puts it at 75%)
	waitFor(t, "first failure", func() bool { return fx.count("failure") == 1 })
	for i, d := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		fx.waitTimers(t)
		fx.clock.Step(d - 10*time.Millisecond)
		time.Sleep(20 * time.Millisecond)
		if got := fx.count("failure"); got != float64(i+1) {
			t.Fatalf("retry %d happened before its backoff of %v (failures %v)", i+1, d, got)
		}
		fx.clock.Step(10 * time.Millisecond)
		waitFor(t, fmt.Sprintf("failure %d", i+2), func() bool { return fx.count("failure") == float64(i+2) })
	}
	if !fx.m.Ready() || fx.m.Certificate() == nil {
		t.Fatal("a failing renewal must keep the current certificate in service")
	}
	fx.files.writeToken(t, "rotated.by.kubelet")
	fx.waitTimers(t)
	fx.clock.Step(4 * time.Second)
	waitFor(t, "success with the re-read token", func() bool { return fx.count("success") == 2 })
}

func TestRefusesUnusableResponses(t *testing.T) {
	other := identitytest.NewRoot(t, "other anchor").NewIntermediate(t, "other issuer")
	tests := []struct {
		name   string
		tamper func(t *testing.T, svc *fakeService, chain []byte) []byte
	}{
		{"empty chain", func(*testing.T, *fakeService, []byte) []byte { return nil }},
		{"garbage", func(*testing.T, *fakeService, []byte) []byte {
			return []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
		}},
		{"private key block", func(t *testing.T, _ *fakeService, chain []byte) []byte {
			return append(chain, identitytest.PEMKey(t, identitytest.NewKey(t))...)
		}},
		{"other identity", func(t *testing.T, svc *fakeService, _ []byte) []byte {
			return chainPEM(svc.issuer.SVID(t, spiffe.MustParse("spiffe://cluster.local/ns/shop/sa/admin")), svc.issuer)
		}},
		{"key of another workload", func(t *testing.T, svc *fakeService, _ []byte) []byte {
			return chainPEM(svc.issuer.SVID(t, workloadID), svc.issuer)
		}},
		{"chain to an unknown anchor", func(t *testing.T, _ *fakeService, _ []byte) []byte {
			return chainPEM(other.SVID(t, workloadID), other)
		}},
		{"issuer missing from the chain", func(t *testing.T, _ *fakeService, chain []byte) []byte {
			block, _ := pem.Decode(chain)
			return pem.EncodeToMemory(block)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newFixture(t, 0.5, nil)
			fx.svc.tamper.Store(func(chain []byte) []byte { return tt.tamper(t, fx.svc, chain) })
			fx.run(t)
			waitFor(t, "a refused response", func() bool { return fx.count("failure") >= 1 })
			if fx.m.Ready() || fx.m.Certificate() != nil {
				t.Fatal("an unusable certificate was installed")
			}
		})
	}
}

func chainPEM(cert *tls.Certificate, issuer *identitytest.CA) []byte {
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	if issuer != nil {
		out = append(out, identitytest.PEMCerts(issuer.Chain()...)...)
	}
	return out
}

func TestTrustBundleReload(t *testing.T) {
	fx := start(t, 0.5, func(o *Options) { o.BundlePollInterval = time.Second })
	if err := fx.m.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	newRoot := identitytest.NewRoot(t, "new anchor")
	peer := newRoot.NewIntermediate(t, "new issuer").SVID(t, workloadID)
	verifies := func() bool {
		inter := x509.NewCertPool()
		c, _ := x509.ParseCertificate(peer.Certificate[1])
		inter.AddCert(c)
		_, err := peer.Leaf.Verify(x509.VerifyOptions{Roots: fx.m.Roots(), Intermediates: inter, CurrentTime: time.Now()})
		return err == nil
	}
	if verifies() {
		t.Fatal("a certificate from an anchor outside the bundle verified")
	}
	before := fx.m.Roots()

	// An invalid bundle is ignored: the last good roots stay.
	fx.files.writeBundle(t, []byte("not a bundle"))
	fx.waitTimers(t)
	fx.clock.Step(time.Second)
	waitFor(t, "invalid bundle counted", func() bool {
		return identitytest.Value(t, fx.m.bundleLoad.WithLabelValues("invalid")) == 1
	})
	if fx.m.Roots() != before {
		t.Fatal("roots replaced by an invalid bundle")
	}

	// The bundle during an anchor rotation holds the previous and the new anchor: both verify.
	fx.files.writeBundle(t, identitytest.PEMCerts(fx.root.Cert, newRoot.Cert))
	fx.waitTimers(t)
	fx.clock.Step(time.Second)
	waitFor(t, "new bundle loaded", verifies)
	if err := fx.m.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
	leaf := fx.m.Certificate()
	inter := x509.NewCertPool()
	inter.AddCert(fx.svc.issuer.Cert)
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: fx.m.Roots(), Intermediates: inter, CurrentTime: fx.clock.Now()}); err != nil {
		t.Fatalf("previous anchor dropped from the pool: %v", err)
	}
}

func TestMissingTrustBundleIsRetried(t *testing.T) {
	fx := start(t, 0.5, func(o *Options) {
		o.TrustBundleFile = filepath.Join(t.TempDir(), "absent", "ca-bundle.crt")
	})
	waitFor(t, "failure without a bundle", func() bool { return fx.count("failure") >= 1 })
	if fx.svc.requests.Load() != 0 {
		t.Fatal("requested a certificate without trust roots to verify the identity service")
	}
	if err := os.MkdirAll(filepath.Dir(fx.m.opts.TrustBundleFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fx.m.opts.TrustBundleFile, identitytest.PEMCerts(fx.root.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	fx.waitTimers(t)
	fx.clock.Step(DefaultMaxBackoff)
	if err := fx.m.WaitReady(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestIdentityServiceMustVerify(t *testing.T) {
	fx := start(t, 0.5, func(o *Options) { o.ServerName = "someone-else.test" })
	waitFor(t, "refused handshake", func() bool { return fx.count("failure") >= 1 })
	if fx.m.Ready() {
		t.Fatal("accepted an identity service whose certificate does not match ServerName")
	}
}

func TestRenewAt(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	na := nb.Add(24 * time.Hour)
	tests := []struct {
		name             string
		fraction, jitter float64
		r                float64
		want             time.Duration
	}{
		{"no jitter", 0.7, 0, 0.3, 16*time.Hour + 48*time.Minute},
		{"middle of the window", 0.7, 0.05, 0.5, 16*time.Hour + 48*time.Minute},
		{"earliest", 0.7, 0.05, 0, 15*time.Hour + 36*time.Minute},
		{"latest", 0.7, 0.05, 1, 18 * time.Hour},
		{"clamped at expiry", 0.99, 0.05, 1, 24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := renewAt(nb, na, tt.fraction, tt.jitter, tt.r).Sub(nb); got != tt.want {
				t.Fatalf("renewAt = +%v, want +%v", got, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		failures int
		r        float64
		want     time.Duration
	}{
		{1, 0, 500 * time.Millisecond},
		{1, 1, time.Second},
		{2, 1, 2 * time.Second},
		{3, 0.5, 3 * time.Second},
		{7, 1, 60 * time.Second},
		{1000, 1, 60 * time.Second},
		{1000, 0, 30 * time.Second},
	}
	for _, tt := range tests {
		if got := backoff(tt.failures, time.Second, time.Minute, tt.r); got != tt.want {
			t.Errorf("backoff(%d, r=%v) = %v, want %v", tt.failures, tt.r, got, tt.want)
		}
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no ID", Options{Addr: "x:8080"}, "ID is required"},
		{"no Addr", Options{ID: workloadID}, "Addr is required"},
		{"Addr without port", Options{ID: workloadID, Addr: "identity"}, "Addr"},
		{"RenewFraction 1", Options{ID: workloadID, Addr: "x:1", RenewFraction: 1}, "RenewFraction"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.opts); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want error with %q", err, tt.want)
			}
		})
	}
	m, err := New(Options{ID: workloadID, Addr: "identity.trellis-system.svc:8080"})
	if err != nil {
		t.Fatal(err)
	}
	if m.opts.ServerName != "identity.trellis-system.svc" || m.opts.TokenFile != DefaultTokenFile ||
		m.opts.TrustBundleFile != DefaultTrustBundleFile || m.opts.RenewFraction != DefaultRenewFraction {
		t.Fatalf("defaults not applied: %+v", m.opts)
	}
	if m.Certificate() != nil || m.Roots() != nil || m.Ready() {
		t.Fatal("a new Manager claims credentials")
	}
	if err := m.Run(canceled()); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(canceled()); err == nil {
		t.Fatal("second Run accepted")
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestParseTrustBundle(t *testing.T) {
	root := identitytest.NewRoot(t, "a")
	leaf := root.SVID(t, workloadID)
	tests := []struct {
		name    string
		in      []byte
		anchors int
		wantErr bool
	}{
		{"one", identitytest.PEMCerts(root.Cert), 1, false},
		{"two", identitytest.PEMCerts(root.Cert, identitytest.NewRoot(t, "b").Cert), 2, false},
		{"empty", nil, 0, true},
		{"not a CA", identitytest.PEMCerts(leaf.Leaf), 0, true},
		{"key block", identitytest.PEMKey(t, identitytest.NewKey(t)), 0, true},
		{"truncated", identitytest.PEMCerts(root.Cert)[:200], 0, true},
		{"trailing junk", append(identitytest.PEMCerts(root.Cert), "junk"...), 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, n, err := ParseTrustBundle(tt.in)
			if (err != nil) != tt.wantErr || n != tt.anchors {
				t.Fatalf("ParseTrustBundle = %d, %v", n, err)
			}
		})
	}
}

func bigSerial(n int32) *big.Int { return big.NewInt(int64(n) + 1) }
