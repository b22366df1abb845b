package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/admin"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/mtls"
	"github.com/trellis-mesh/trellis/proxy/reload"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The HTTP/2 transport's idle connections and net/http's test servers wind down asynchronously.
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

// harness is an in-process proxy whose original destinations are injected: each client connection is attributed to
// the destination set in dst when it was accepted.
type harness struct {
	t       testing.TB
	p       *Proxy
	store   *snapshot.Store
	metrics *metrics.Metrics
	traffic *snapshot.Traffic // balancers, failure accrual, budgets and breakers, shared by every compilation
	watcher *reload.Watcher
	dir     string
	out, in string // listener addresses
	admin   string
	dst     atomic.Pointer[netip.AddrPort]
}

// testLog discards logs unless TRELLIS_TEST_LOG is set.
var testLog = func() *slog.Logger {
	if os.Getenv("TRELLIS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}()

// clusterIP is the fake service address tests route to.
var clusterIP = netip.MustParseAddrPort("10.96.0.1:80")

func newHarness(t testing.TB, doc string) *harness { return newHarnessWith(t, doc, nil) }

// newHarnessWith lets a test adjust the proxy's options before it starts.
func newHarnessWith(t testing.TB, doc string, mutate func(*Options)) *harness {
	t.Helper()
	return newMeshHarness(t, doc, nil, mutate)
}

// newMeshHarness starts a proxy with mesh TLS on, using creds (off when creds is nil), then lets mutate adjust its
// options.
func newMeshHarness(t testing.TB, doc string, creds mtls.Credentials, mutate func(*Options)) *harness {
	t.Helper()
	h := &harness{t: t, metrics: metrics.New(), store: &snapshot.Store{}, dir: t.TempDir(),
		traffic: snapshot.NewTraffic(snapshot.TrafficOptions{})}
	h.metrics.SetOutboundSource(h.traffic.Stats)
	h.watcher = &reload.Watcher{Dir: h.dir, Interval: 5 * time.Millisecond, Store: h.store, Metrics: h.metrics,
		Log: testLog,
		Compile: func(l *proxyconfig.Loaded) (*snapshot.Snapshot, error) {
			return snapshot.Compile(l, snapshot.Options{Metrics: h.metrics, MeshTLS: creds != nil, Traffic: h.traffic})
		}}
	h.writeConfig(doc)
	if _, err := h.watcher.Reload(); err != nil {
		t.Fatal(err)
	}
	d := clusterIP
	h.dst.Store(&d)
	out, in := listen(t), listen(t)
	h.out, h.in = out.Addr().String(), in.Addr().String()
	o := Options{Store: h.store, Metrics: h.metrics, Log: testLog,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) { return *h.dst.Load(), nil },
		OwnPorts:    []uint16{port(h.out), port(h.in)}}
	if creds != nil {
		o.Connector, o.Terminator = NewMeshTLS(creds, h.metrics, h.store)
	}
	if mutate != nil {
		mutate(&o)
	}
	h.p = New(o)
	var wg sync.WaitGroup
	wg.Go(func() { _ = h.p.Serve(out, Outbound) })
	wg.Go(func() { _ = h.p.Serve(in, Inbound) })
	adm := httptest.NewServer((&admin.Server{Metrics: h.metrics, Store: h.store, Draining: h.p.Draining}).Handler())
	h.admin = adm.URL
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.p.Shutdown(ctx)
		wg.Wait()
		adm.Close()
	})
	return h
}

func listen(t testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func port(addr string) uint16 { return netip.MustParseAddrPort(addr).Port() }

func (h *harness) setDst(ap netip.AddrPort) { h.dst.Store(&ap) }

// writeConfig replaces the configuration the way kubelet does: a new timestamped directory, then an atomic swap of
// the ..data link.
func (h *harness) writeConfig(doc string) {
	h.t.Helper()
	writeKubeletDir(h.t, h.dir, map[string]string{"config.json": doc})
}

var dirSeq atomic.Int64

func writeKubeletDir(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	ts := fmt.Sprintf("..%d_%d", time.Now().UnixNano(), dirSeq.Add(1))
	if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, ts, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	old, _ := os.Readlink(filepath.Join(dir, "..data"))
	tmp := filepath.Join(dir, "..data_tmp")
	os.Remove(tmp)
	if err := os.Symlink(ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if old != "" {
		os.RemoveAll(filepath.Join(dir, old))
	}
}

// serviceDoc renders a configuration with one service at clusterIP whose single backend has endpoints eps.
func serviceDoc(version string, eps []string, extra string) string {
	var e []string
	for _, a := range eps {
		e = append(e, fmt.Sprintf(`{"address": %q}`, a))
	}
	return fmt.Sprintf(`{"apiVersion": "proxy.trellis.io/v1alpha1", "version": %q, %s
	  "services": [{"name": "web", "namespace": "shop", "clusterIPs": ["10.96.0.1"], "port": 80,
	    "backends": [{"name": "web", "endpoints": [%s]}]}]}`, version, extra, strings.Join(e, ","))
}

// scrape returns the value of one series from the proxy's registry.
func (h *harness) counter(name string, labels map[string]string) float64 {
	h.t.Helper()
	mfs, err := h.metrics.Registry.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metric
				}
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			case m.Histogram != nil:
				total += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return total
}

func (h *harness) configStatus() admin.ConfigStatus {
	h.t.Helper()
	resp, err := http.Get(h.admin + "/config")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var cs admin.ConfigStatus
	if err := json.NewDecoder(resp.Body).Decode(&cs); err != nil {
		h.t.Fatal(err)
	}
	return cs
}

// namedBackend answers with its name, so tests can see where requests went.
func namedBackend(t testing.TB, name string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte(name))
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// tool finds a peer binary in the repository's bin/ or on PATH. Without it the test is skipped, except under CI=true,
// where the make target has built it and its absence is a failure.
func tool(t testing.TB, name string) string {
	t.Helper()
	if root, err := repoRoot(); err == nil {
		p := filepath.Join(root, "bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found in bin/ or PATH (make test-proxy installs it)", name)
	}
	t.Skipf("%s not found in bin/ or PATH; run make test-proxy to install it", name)
	return ""
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}

func contextWithStop(stop chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	return ctx, cancel
}
