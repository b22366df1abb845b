package reload

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func doc(version string) []byte {
	return []byte(fmt.Sprintf(`{"apiVersion": %q, "version": %q}`, proxyconfig.APIVersion, version))
}

// TestDocumentNames checks that LoadDocuments picks documents by the same rules as proxyconfig.DocumentFiles.
func TestDocumentNames(t *testing.T) {
	for _, names := range [][]string{
		{"config.json"},
		{"config.yaml"},
		{"config-000.json", "config-001.json", "config-002.yaml"},
		{"config-b.json", "config-a.json"},
		{"config.json", "README.md", ".hidden.json", "other.json", "config-.json"},
		{"config.json", "config.yaml"},
		{"config.json", "config-000.json"},
		{"notes.txt"},
		{},
	} {
		dir := t.TempDir()
		var docs []Document
		for _, n := range names {
			if err := os.WriteFile(filepath.Join(dir, n), doc("1"), 0o644); err != nil {
				t.Fatal(err)
			}
			docs = append(docs, Document{Origin: "cm", Name: n, Data: doc("1")})
		}
		files, dirErr := proxyconfig.DocumentFiles(dir)
		l, err := LoadDocuments(docs)
		if (dirErr == nil) != (err == nil) {
			t.Errorf("%v: directory %v, documents %v", names, dirErr, err)
			continue
		}
		if err != nil {
			continue
		}
		var want []string
		for _, f := range files {
			want = append(want, "cm/"+filepath.Base(f))
		}
		if !slices.Equal(l.Files, want) {
			t.Errorf("%v: documents %v, directory %v", names, l.Files, want)
		}
	}
}

func TestLoadDocumentsShards(t *testing.T) {
	shard := func(version, svc string) []byte {
		return []byte(fmt.Sprintf(`{"apiVersion": %q, "version": %q, "services": [{"name": %q, "namespace": "shop",
		  "clusterIPs": ["10.96.0.%d"], "port": 80, "backends": [{"name": %q}]}]}`, proxyconfig.APIVersion, version,
			svc, len(svc), svc))
	}
	l, err := LoadDocuments([]Document{
		{Origin: "trellis-proxy-config-1", Name: "config-001.json", Data: shard("v", "cart")},
		{Origin: "trellis-proxy-config", Name: "config-000.json", Data: shard("v", "web")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Config.Services) != 2 || l.Config.Services[0].Name != "web" {
		t.Errorf("merged services %+v", l.Config.Services)
	}
	if want := []string{"trellis-proxy-config/config-000.json", "trellis-proxy-config-1/config-001.json"}; !slices.Equal(l.Files, want) {
		t.Errorf("files %v", l.Files)
	}
	// Shards of two renderings, and the same key in two ConfigMaps, are refused.
	if _, err := LoadDocuments([]Document{{Origin: "a", Name: "config-000.json", Data: shard("v1", "web")},
		{Origin: "b", Name: "config-001.json", Data: shard("v2", "cart")}}); err == nil {
		t.Error("shards of different versions merged")
	}
	if _, err := LoadDocuments([]Document{{Origin: "a", Name: "config.json", Data: doc("1")},
		{Origin: "b", Name: "config.json", Data: doc("1")}}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("the same name twice: %v", err)
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels([]byte("app=\"web\"\napp.kubernetes.io/version=\"1.2\"\nquote=\"a \\\"b\\\" \\\\ c\"\n\nempty=\"\""))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"app": "web", "app.kubernetes.io/version": "1.2", "quote": `a "b" \ c`, "empty": ""}
	if !maps.Equal(got, want) {
		t.Errorf("%v, want %v", got, want)
	}
	for _, bad := range []string{"app", "=\"x\"", "app=web", "app=\"web"} {
		if _, err := ParseLabels([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// pipeline returns a Pipeline whose compilations record the labels of a LabelWatcher in the snapshot's Source.
func pipeline(t *testing.T, labels *LabelWatcher) (*Pipeline, *snapshot.Store, *metrics.Metrics) {
	t.Helper()
	store, m := &snapshot.Store{}, metrics.New()
	var compiles atomic.Int64
	p := &Pipeline{Store: store, Metrics: m, Log: testLog(t),
		Compile: func(l *proxyconfig.Loaded) (*snapshot.Snapshot, error) {
			s, err := snapshot.Compile(l, snapshot.Options{Metrics: m})
			if err == nil && labels != nil {
				s.Source = []string{fmt.Sprint(labels.Labels()), fmt.Sprint(compiles.Add(1))}
			}
			return s, err
		}}
	return p, store, m
}

func load(docs ...Document) func() (*proxyconfig.Loaded, error) {
	return func() (*proxyconfig.Loaded, error) { return LoadDocuments(docs) }
}

func cm(version string) Document {
	return Document{Origin: "trellis-proxy-config", Name: "config.json", Data: doc(version)}
}

// TestPipelineSources checks which source wins: the API's documents always, the volume's only when it holds a
// version the API has not delivered and the API watch is not synced.
func TestPipelineSources(t *testing.T) {
	p, store, _ := pipeline(t, nil)
	offer := func(source, version, want string) {
		t.Helper()
		got, _ := p.Offer(source, source, load(cm(version)))
		if got != want {
			t.Errorf("%s offers %s: %s, want %s", source, version, got, want)
		}
	}
	running := func(want string) {
		t.Helper()
		if v := store.Load().Version; v != want {
			t.Errorf("running %s, want %s", v, want)
		}
	}
	offer(SourceVolume, "A", Success) // the volume at start
	offer(SourceAPI, "B", Success)    // the API's list
	p.SetAPISynced(true)
	offer(SourceVolume, "A2", Stale) // the kubelet's view differs from a synced watch: ignored
	running("B")
	offer(SourceAPI, "C", Success)
	offer(SourceVolume, "B", Stale) // the kubelet catching up with an older version
	offer(SourceVolume, "C", Unchanged)
	p.SetAPISynced(false)
	offer(SourceVolume, "B", Stale) // delivered by the API before: older
	running("C")
	offer(SourceVolume, "D", Success) // the API is down: the volume's new version wins
	offer(SourceAPI, "D", Unchanged)
	offer(SourceAPI, "B", Success) // the API's newest is B again (a rollback)
	running("B")
	// A bad document keeps the last good one, whatever its source.
	if res, err := p.Offer(SourceAPI, "api", load(Document{Name: "config.json", Data: []byte("{")})); res != Failure || err == nil {
		t.Errorf("bad document: %s %v", res, err)
	}
	running("B")
}

func TestPipelineCounts(t *testing.T) {
	p, _, m := pipeline(t, nil)
	_, _ = p.Offer(SourceAPI, "api", load(cm("1")))
	_, _ = p.Offer(SourceAPI, "api", load(cm("1")))
	_, _ = p.Offer(SourceVolume, "dir", load(Document{Name: "config.json", Data: []byte("{")}))
	text := gather(t, m)
	for _, want := range []string{
		`config_reload_total{result="success",source="api"} 1`,
		`config_reload_total{result="unchanged",source="api"} 1`,
		`config_reload_total{result="failure",source="volume"} 1`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %s in\n%s", want, text)
		}
	}
}

// TestLabelWatcher checks that a change of the labels file, written the way the kubelet updates a downward API
// volume, recompiles the running document with the new labels, and that a broken file keeps the last labels.
func TestLabelWatcher(t *testing.T) {
	dir := t.TempDir()
	write := func(content string) {
		t.Helper()
		ts := filepath.Join(dir, fmt.Sprintf("..%d", time.Now().UnixNano()))
		if err := os.Mkdir(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ts, "labels"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		_ = os.Symlink("..data/labels", filepath.Join(dir, "labels")) // exists after the first write
	}
	w := &LabelWatcher{File: filepath.Join(dir, "labels"), Interval: 5 * time.Millisecond, Log: testLog(t)}
	if changed, err := w.Load(); changed || err == nil || len(w.Labels()) != 0 {
		t.Fatalf("missing file: changed %v, %v, labels %v", changed, err, w.Labels())
	}
	write(`app="web"`)
	p, store, _ := pipeline(t, w)
	w.Pipeline = p
	if changed, err := w.Load(); !changed || err != nil || w.Labels()["app"] != "web" {
		t.Fatalf("first read: changed %v, %v, labels %v", changed, err, w.Labels())
	}
	if res, err := p.Offer(SourceVolume, dir, load(cm("1"))); res != Success {
		t.Fatal(res, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitSource := func(want string) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); store.Load().Source[0] != want; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("snapshot compiled with %v, want %s", store.Load().Source, want)
			}
		}
	}
	waitSource("map[app:web]")
	write("app=\"web\"\ntrack=\"canary\"")
	waitSource("map[app:web track:canary]")
	before := store.Load()
	write("app=web") // not what the kubelet writes: refused, the labels stay
	time.Sleep(50 * time.Millisecond)
	if store.Load() != before || w.Labels()["track"] != "canary" {
		t.Errorf("a broken labels file changed the snapshot: %v", store.Load().Source)
	}
	write("app=\"web\"\ntrack=\"canary\"") // the same labels again: nothing to do
	time.Sleep(50 * time.Millisecond)
	if store.Load() != before {
		t.Error("unchanged labels recompiled the configuration")
	}
}

// testLog discards logs unless TRELLIS_TEST_LOG is set.
func testLog(t *testing.T) *slog.Logger {
	t.Helper()
	if os.Getenv("TRELLIS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// gather renders the counters of m's registry as name{labels} value lines.
func gather(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			var ls []string
			for _, l := range mt.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			fmt.Fprintf(&b, "%s{%s} %v\n", mf.GetName(), strings.Join(ls, ","), mt.GetCounter().GetValue())
		}
	}
	return b.String()
}

// FuzzParseLabels checks that whatever ParseLabels accepts, written back the way the kubelet writes labels, reads
// back the same.
func FuzzParseLabels(f *testing.F) {
	f.Add([]byte("app=\"web\"\ntier=\"a \\\"b\\\"\""))
	f.Add([]byte("k=\"\\u00e9\\n\""))
	f.Add([]byte("=\"x\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		labels, err := ParseLabels(data)
		if err != nil {
			return
		}
		keys := slices.Sorted(maps.Keys(labels))
		var b strings.Builder
		for _, k := range keys {
			fmt.Fprintf(&b, "%s=%q\n", k, labels[k])
		}
		again, err := ParseLabels([]byte(b.String()))
		if err != nil || !maps.Equal(again, labels) {
			t.Fatalf("%q → %v → %q → %v, %v", data, labels, b.String(), again, err)
		}
	})
}
