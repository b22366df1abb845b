package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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
