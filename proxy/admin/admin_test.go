package admin

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

func TestEndpoints(t *testing.T) {
	store := &snapshot.Store{}
	draining := false
	shutdowns := make(chan struct{}, 1)
	s := &Server{Metrics: metrics.New(), Store: store, Draining: func() bool { return draining }}
	do := func(h http.Handler, method, path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		b, _ := io.ReadAll(rec.Body)
		return rec.Code, string(b)
	}
	h := s.Handler()
	if code, _ := do(h, "GET", "/ready"); code != 503 {
		t.Errorf("/ready before a configuration = %d", code)
	}
	if code, _ := do(h, "GET", "/config"); code != 503 {
		t.Errorf("/config before a configuration = %d", code)
	}
	if code, _ := do(h, "GET", "/live"); code != 200 {
		t.Errorf("/live = %d", code)
	}
	store.Swap(&snapshot.Snapshot{Version: "7", Hash: "sha256:abc"})
	if code, _ := do(h, "GET", "/ready"); code != 200 {
		t.Errorf("/ready = %d", code)
	}
	code, body := do(h, "GET", "/config")
	var cs ConfigStatus
	if err := json.Unmarshal([]byte(body), &cs); code != 200 || err != nil || cs.Version != "7" || cs.Hash != "sha256:abc" {
		t.Errorf("/config = %d %s", code, body)
	}
	if code, body := do(h, "GET", "/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d", code)
	}
	if code, _ := do(h, "POST", "/shutdown"); code != 404 {
		t.Errorf("/shutdown without the flag = %d, want 404", code)
	}
	draining = true
	if code, _ := do(h, "GET", "/ready"); code != 503 {
		t.Errorf("/ready while draining = %d", code)
	}
	s.Shutdown = func() { shutdowns <- struct{}{} }
	h = s.Handler()
	if code, _ := do(h, "GET", "/shutdown"); code != 405 {
		t.Errorf("GET /shutdown = %d, want 405", code)
	}
	if code, _ := do(h, "POST", "/shutdown"); code != 200 {
		t.Errorf("POST /shutdown = %d", code)
	}
	<-shutdowns
}

// TestAwaitReady checks the postStart wait against a real listener: it returns once /ready answers 200, and fails
// with the last answer when the deadline comes first.
func TestAwaitReady(t *testing.T) {
	var ready atomic.Bool
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path != "/ready" || !ready.Load() {
			http.Error(w, "no configuration loaded", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err := AwaitReady(ctx, ":"+port, 20*time.Millisecond)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "503 no configuration loaded") {
		t.Fatalf("AwaitReady before ready: %v, want the last answer in the error", err)
	}
	time.AfterFunc(100*time.Millisecond, func() { ready.Store(true) })
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := calls.Load()
	if err := AwaitReady(ctx, "0.0.0.0:"+port, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if calls.Load()-before < 2 {
		t.Errorf("%d polls: the wait returned before the proxy was ready", calls.Load()-before)
	}
	if err := AwaitReady(ctx, "nonsense", time.Millisecond); err == nil {
		t.Error("AwaitReady accepted an address without a port")
	}
}
