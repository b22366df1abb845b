package apiconfig

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/reload"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

// fakeAPI is a scripted API server for one ConfigMap name: each list answers the current object, each watch plays
// the next script of events (then ends, as a watch timeout does).
type fakeAPI struct {
	t       *testing.T
	mu      sync.Mutex
	cm      map[string]any // nil: absent
	rv      int
	lists   int
	watches [][]string // scripts: events as JSON lines; "block" waits for the request's end
	seenRVs []string   // resourceVersion of each watch request
	token   string
	tokens  []string // Authorization headers seen
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.tokens = append(f.tokens, r.Header.Get("Authorization"))
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		f.mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"kind":"Status","code":401,"reason":"Unauthorized","message":"bad token"}`)
		return
	}
	q := r.URL.Query()
	if q.Get("fieldSelector") != "metadata.name=trellis-proxy-config" {
		f.mu.Unlock()
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"kind":"Status","code":403,"reason":"Forbidden","message":"configmaps is forbidden: %s"}`,
			q.Get("fieldSelector"))
		return
	}
	if q.Get("watch") != "true" {
		f.lists++
		items := []any{}
		if f.cm != nil {
			items = append(items, f.cm)
		}
		body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": fmt.Sprint(f.rv)}, "items": items})
		f.mu.Unlock()
		_, _ = w.Write(body)
		return
	}
	f.seenRVs = append(f.seenRVs, q.Get("resourceVersion"))
	var script []string
	if len(f.watches) > 0 {
		script, f.watches = f.watches[0], f.watches[1:]
	} else {
		script = []string{"block"}
	}
	f.mu.Unlock()
	w.WriteHeader(http.StatusOK)
	for _, line := range script {
		if line == "block" {
			<-r.Context().Done()
			return
		}
		f.apply(line)
		fmt.Fprintln(w, line)
		w.(http.Flusher).Flush()
	}
}

// apply makes the fake's state follow an event it sends: lists after it answer accordingly.
func (f *fakeAPI) apply(line string) {
	var ev struct {
		Type   string
		Object struct {
			Metadata struct{ ResourceVersion string }
		}
	}
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		f.t.Errorf("bad scripted event %s: %v", line, err)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch ev.Type {
	case "ADDED", "MODIFIED":
		_ = json.Unmarshal([]byte(line), &struct{ Object *map[string]any }{&f.cm})
		fallthrough
	case "BOOKMARK":
		fmt.Sscan(ev.Object.Metadata.ResourceVersion, &f.rv) //nolint:errcheck // scripted
	case "DELETED":
		f.cm = nil
	case "ERROR":
		f.rv += 5 // the version the 410 said was too old has been compacted away
	}
}

// object returns a ConfigMap holding a document of version v at resource version rv.
func object(v string, rv int) map[string]any {
	return map[string]any{
		"metadata": map[string]any{"name": "trellis-proxy-config", "resourceVersion": fmt.Sprint(rv),
			"annotations": map[string]any{AnnotationConfigHash: "h-" + v}},
		"data": map[string]any{"config.json": fmt.Sprintf(`{"apiVersion": %q, "version": %q}`, proxyconfig.APIVersion, v)},
	}
}

func event(typ string, obj any) string {
	b, _ := json.Marshal(map[string]any{"type": typ, "object": obj})
	return string(b)
}

// logBuffer collects log records for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if os.Getenv("TRELLIS_TEST_LOG") != "" {
		_, _ = os.Stderr.Write(p)
	}
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type fixture struct {
	store *snapshot.Store
	m     *metrics.Metrics
	pipe  *reload.Pipeline
	logs  *logBuffer
	log   *slog.Logger
}

func newFixture() *fixture {
	f := &fixture{store: &snapshot.Store{}, m: metrics.New(), logs: &logBuffer{}}
	f.log = slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	f.pipe = &reload.Pipeline{Store: f.store, Metrics: f.m, Log: f.log,
		Compile: func(l *proxyconfig.Loaded) (*snapshot.Snapshot, error) {
			return snapshot.Compile(l, snapshot.Options{Metrics: f.m})
		}}
	return f
}

func (f *fixture) version() string {
	if s := f.store.Load(); s != nil {
		return s.Version
	}
	return ""
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(within); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// startFake serves api over TLS and returns Options reaching it with a token and CA in files.
func startFake(t *testing.T, api *fakeAPI) Options {
	t.Helper()
	srv := httptest.NewUnstartedServer(api)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	api.token = "secret-1"
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(tokenFile, []byte(api.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	return Options{Host: srv.URL, TokenFile: tokenFile, CAFile: caFile, Namespace: "shop",
		Names: []string{"trellis-proxy-config"}, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Settle: 5 * time.Millisecond}
}

// verifyNoLeaks checks, after every other cleanup of the test, that the test left no goroutine behind.
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

func run(t *testing.T, s *Source) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the source did not stop")
		}
	})
}

// TestWatchEvents checks list then watch, a modification, a bookmark advancing the resource version, a watch the
// server ends being renewed from the last version, and an expired version (an ERROR event with 410) leading to a
// new list and a watch from its version.
func TestWatchEvents(t *testing.T) {
	verifyNoLeaks(t)
	api := &fakeAPI{t: t, cm: object("1", 10), rv: 10, watches: [][]string{
		{event("MODIFIED", object("2", 11)), event("BOOKMARK", map[string]any{"metadata": map[string]any{"resourceVersion": "15"}})},
		{event("ERROR", map[string]any{"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 15 (20)"})},
	}}
	fx := newFixture()
	o := startFake(t, api)
	o.Pipeline, o.Log = fx.pipe, fx.log
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, s)
	waitFor(t, 5*time.Second, "the third watch", func() bool {
		api.mu.Lock()
		defer api.mu.Unlock()
		return len(api.seenRVs) >= 3
	})
	waitFor(t, 5*time.Second, "version 2", func() bool { return fx.version() == "2" })
	api.mu.Lock()
	defer api.mu.Unlock()
	if want := []string{"10", "15", "20"}; strings.Join(api.seenRVs[:3], ",") != strings.Join(want, ",") {
		t.Errorf("watches from %v, want %v", api.seenRVs, want)
	}
	if api.lists != 2 {
		t.Errorf("%d lists, want 2 (start, after 410)", api.lists)
	}
	if !strings.Contains(fx.logs.String(), "Configuration watch expired; listing again") {
		t.Errorf("no expiry logged:\n%s", fx.logs)
	}
}

// TestWatchFailures checks that a refused request (a bad token) backs off and recovers once the token file holds a
// good token again (it is re-read for every request), and that the source reports itself synced only meanwhile.
func TestWatchFailures(t *testing.T) {
	verifyNoLeaks(t)
	api := &fakeAPI{t: t, cm: object("1", 10), rv: 10}
	fx := newFixture()
	o := startFake(t, api)
	o.Pipeline, o.Log = fx.pipe, fx.log
	if err := os.WriteFile(o.TokenFile, []byte("expired"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, s)
	waitFor(t, 5*time.Second, "a refusal", func() bool { return strings.Contains(fx.logs.String(), "401") })
	if fx.version() != "" {
		t.Fatal("loaded with a refused token")
	}
	if err := os.WriteFile(o.TokenFile, []byte(api.token), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "version 1", func() bool { return fx.version() == "1" })
	if !strings.Contains(fx.logs.String(), "Configuration watch recovered") {
		t.Errorf("no recovery logged:\n%s", fx.logs)
	}
}

// TestDifferentRenderingsWait checks that ConfigMaps carrying different configuration hashes are not loaded until
// they agree.
func TestDifferentRenderingsWait(t *testing.T) {
	cm := func(name, hash, doc string) *configMap {
		return &configMap{Metadata: objectMeta{Name: name, ResourceVersion: hash + name,
			Annotations: map[string]string{AnnotationConfigHash: hash}}, Data: map[string]string{doc: fmt.Sprintf(
			`{"apiVersion": %q, "version": %q}`, proxyconfig.APIVersion, hash)}}
	}
	fx := newFixture()
	s := &Source{o: Options{Namespace: "shop", Pipeline: fx.pipe, Log: fx.log}}
	states := []nameState{{known: true, cancel: func() {}}, {known: true, cancel: func() {}}, {cancel: func() {}}}
	states[0].cm, states[1].cm = cm("a", "v2", "config-000.json"), cm("b", "v1", "config-001.json")
	if key := s.offer(states, ""); key != "" || fx.version() != "" {
		t.Fatalf("offered ConfigMaps of two renderings: %q %q", key, fx.version())
	}
	states[1].cm = cm("b", "v2", "config-001.json")
	key := s.offer(states, "")
	if key == "" || fx.version() != "v2" {
		t.Fatalf("consistent ConfigMaps not loaded: %q %q", key, fx.version())
	}
	if again := s.offer(states, key); again != "" {
		t.Error("the same ConfigMaps offered twice")
	}
}
