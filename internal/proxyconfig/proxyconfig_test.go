package proxyconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

// golden compares got with testdata file name, rewriting it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func loadFile(t *testing.T, path string) (*Loaded, error) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Decode(data)
	if err != nil {
		return nil, err
	}
	return Complete(c)
}

// TestValidDocuments decodes each example document, checks that it validates, and compares the defaulted canonical
// document with its golden file, so a change to defaults or to the schema shows up in review.
func TestValidDocuments(t *testing.T) {
	files, _ := filepath.Glob("testdata/valid/*.[jy]*")
	if len(files) == 0 {
		t.Fatal("no example documents")
	}
	for _, f := range files {
		if strings.HasSuffix(f, ".golden.json") {
			continue
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			l, err := loadFile(t, f)
			if err != nil {
				t.Fatal(err)
			}
			pretty, err := json.MarshalIndent(l.Config, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			pretty = append(pretty, '\n')
			name := strings.TrimSuffix(filepath.Base(f), filepath.Ext(f))
			golden(t, filepath.Join("valid", name+".golden.json"), pretty)
			// The defaulted document round-trips: decoding it again gives the same hash.
			again, err := Decode(pretty)
			if err != nil {
				t.Fatalf("defaulted document does not decode: %v", err)
			}
			l2, err := Complete(again)
			if err != nil {
				t.Fatal(err)
			}
			if l2.Hash != l.Hash {
				t.Errorf("hash changed after a round trip: %s != %s", l2.Hash, l.Hash)
			}
		})
	}
}

// TestInvalidDocuments checks that each broken document is refused with errors naming the offending fields.
func TestInvalidDocuments(t *testing.T) {
	files, _ := filepath.Glob("testdata/invalid/*.[jy]*")
	for _, f := range files {
		if strings.HasSuffix(f, ".err") {
			continue
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := loadFile(t, f)
			if err == nil {
				t.Fatal("accepted an invalid document")
			}
			msg := err.Error() + "\n"
			var ve *ValidationError
			if errors.As(err, &ve) {
				msg = ""
				for _, fe := range ve.Errors {
					msg += fe.Error() + "\n"
				}
			}
			golden(t, filepath.Join("invalid", filepath.Base(f)+".err"), []byte(msg))
		})
	}
}

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		name, doc, wantErr string
	}{
		{"json ok", `{"apiVersion":"proxy.trellis.io/v1alpha1","version":"1"}`, ""},
		{"yaml ok", "apiVersion: proxy.trellis.io/v1alpha1\nversion: '1'\n", ""},
		{"unknown field json", `{"apiVersion":"x","version":"1","extra":1}`, `unknown field "extra"`},
		{"unknown nested yaml", "version: '1'\ndefaults: {detectTimeot: 1s}\n", `unknown field "defaults.detectTimeot"`},
		{"duplicate field", `{"version":"1","version":"2"}`, `duplicate field "version"`},
		{"case mismatch", `{"Version":"1"}`, `unknown field "Version"`},
		{"trailing data", `{"version":"1"} {"version":"2"}`, "invalid character"},
		{"duplicate yaml key", "version: '1'\nversion: '2'\n", "already set"},
		{"bad duration", `{"defaults":{"detectTimeout":"soon"}}`, "invalid duration"},
		{"number duration", `{"defaults":{"detectTimeout":5}}`, "duration must be a string"},
		{"empty", "  \n", "empty"},
		{"yaml null", "~\n", "empty"},
		{"wrong type", `{"services":{}}`, "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.doc))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestDecodeTooLarge(t *testing.T) {
	if _, err := Decode(make([]byte, MaxDocumentSize+1)); err == nil {
		t.Fatal("accepted a document over the size limit")
	}
}

func TestDefaults(t *testing.T) {
	c := &Config{APIVersion: APIVersion, Version: "1", Services: []Service{{
		Name: "a", Namespace: "n", ClusterIPs: []string{"10.0.0.1"}, Port: 80,
		Backends:       []Backend{{Name: "a"}},
		Routes:         []Route{{Name: "r", Matches: []Match{{Path: &PathMatch{Value: "/"}}}, Retry: &RetryPolicy{}}},
		FailureAccrual: &FailureAccrual{MinBackoff: D(5 * time.Second)},
	}}}
	SetDefaults(c)
	d := c.Defaults
	checks := []struct {
		name      string
		got, want any
	}{
		{"clusterDomain", c.ClusterDomain, "cluster.local"},
		{"detectTimeout", d.DetectTimeout.Duration, time.Second},
		{"connectTimeout", d.ConnectTimeout.Duration, time.Second},
		{"requestTimeout", d.RequestTimeout.Duration, time.Duration(0)},
		{"tcpIdleTimeout", d.TCPIdleTimeout.Duration, time.Hour},
		{"httpIdleTimeout", d.HTTPIdleTimeout.Duration, 90 * time.Second},
		{"retryBudget.ratio", *d.RetryBudget.Ratio, 0.2},
		{"retryBudget.minRetriesPerSecond", *d.RetryBudget.MinRetriesPerSecond, int32(10)},
		{"failureAccrual.consecutiveFailures", *d.FailureAccrual.ConsecutiveFailures, int32(7)},
		{"loadBalancer", d.LoadBalancer, "ewma"},
		{"inbound.defaultPolicy", c.Inbound.DefaultPolicy, "all-unauthenticated"},
		{"backend weight", *c.Services[0].Backends[0].Weight, int32(1)},
		{"backend namespace", c.Services[0].Backends[0].Namespace, "n"},
		{"path match type", c.Services[0].Routes[0].Matches[0].Path.Type, "PathPrefix"},
		{"retry attempts", *c.Services[0].Routes[0].Retry.Attempts, int32(1)},
		{"retry on", c.Services[0].Routes[0].Retry.RetryOn[0], "connect-failure"},
		{"retry nonIdempotent", c.Services[0].Routes[0].Retry.NonIdempotent, false},
		{"retry backoff base", c.Services[0].Routes[0].Retry.Backoff.Base.Duration, 25 * time.Millisecond},
		{"retry backoff max", c.Services[0].Routes[0].Retry.Backoff.Max.Duration, 250 * time.Millisecond},
		{"retry maxBodyBytes", *c.Services[0].Routes[0].Retry.MaxBodyBytes, int32(65536)},
		{"service loadBalancer", c.Services[0].LoadBalancer, ""},
		{"service failureAccrual kept", c.Services[0].FailureAccrual.MinBackoff.Duration, 5 * time.Second},
		{"service failureAccrual inherited", *c.Services[0].FailureAccrual.ConsecutiveFailures, int32(7)},
		{"service failureAccrual inherited max", c.Services[0].FailureAccrual.MaxBackoff.Duration, time.Minute},
		{"service maxRequests", c.Services[0].MaxRequests == nil, true},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	before, _ := Hash(c)
	SetDefaults(c)
	if after, _ := Hash(c); after != before {
		t.Error("SetDefaults is not idempotent")
	}
}

// TestHashIgnoresEncoding checks that the same values give the same hash whatever the format, order or whitespace,
// and that any change of value changes it.
func TestHashIgnoresEncoding(t *testing.T) {
	docs := []string{
		`{"apiVersion":"proxy.trellis.io/v1alpha1","version":"1","opaquePorts":[25]}`,
		"opaquePorts: [25]\nversion: \"1\"\napiVersion: proxy.trellis.io/v1alpha1\n",
		`{ "version" : "1", "opaquePorts": [25], "apiVersion":"proxy.trellis.io/v1alpha1",
		   "defaults": {"detectTimeout": "1000ms"} }`,
	}
	var first string
	for i, d := range docs {
		c, err := Decode([]byte(d))
		if err != nil {
			t.Fatal(err)
		}
		l, err := Complete(c)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(l.Hash, "sha256:") || len(l.Hash) != len("sha256:")+64 {
			t.Fatalf("malformed hash %q", l.Hash)
		}
		if i == 0 {
			first = l.Hash
		} else if l.Hash != first {
			t.Errorf("document %d hashes to %s, document 0 to %s", i, l.Hash, first)
		}
	}
	c, _ := Decode([]byte(`{"apiVersion":"proxy.trellis.io/v1alpha1","version":"1","opaquePorts":[26]}`))
	if l, _ := Complete(c); l.Hash == first {
		t.Error("a changed document kept its hash")
	}
}

func TestLoadDir(t *testing.T) {
	write := func(t *testing.T, dir string, files map[string]string) {
		t.Helper()
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	const doc = `{"apiVersion":"proxy.trellis.io/v1alpha1","version":"%s"}`
	tests := []struct {
		name    string
		files   map[string]string
		wantErr string
		version string
	}{
		{"single json", map[string]string{"config.json": strings.Replace(doc, "%s", "a", 1), "other.json": "x"}, "", "a"},
		{"single yaml", map[string]string{"config.yaml": "apiVersion: proxy.trellis.io/v1alpha1\nversion: b\n"}, "", "b"},
		{"shards", map[string]string{"config-1.json": strings.Replace(doc, "%s", "c", 1),
			"config-2.yaml": "apiVersion: proxy.trellis.io/v1alpha1\nversion: c\n"}, "", "c"},
		{"version skew", map[string]string{"config-1.json": strings.Replace(doc, "%s", "c", 1),
			"config-2.json": strings.Replace(doc, "%s", "d", 1)}, "shard 1 has", ""},
		{"both kinds", map[string]string{"config.json": strings.Replace(doc, "%s", "c", 1),
			"config-2.json": strings.Replace(doc, "%s", "c", 1)}, "both", ""},
		{"two singles", map[string]string{"config.json": strings.Replace(doc, "%s", "c", 1),
			"config.yaml": "version: c"}, "more than one", ""},
		{"empty dir", map[string]string{"README": "x"}, "no config.json", ""},
		{"bad shard", map[string]string{"config-1.json": "{"}, "config-1.json", ""},
		{"invalid", map[string]string{"config.json": `{"apiVersion":"v0","version":"1"}`}, "apiVersion", ""},
		{"conflicting defaults", map[string]string{
			"config-1.json": `{"apiVersion":"proxy.trellis.io/v1alpha1","version":"1","defaults":{"loadBalancer":"random"}}`,
			"config-2.json": `{"apiVersion":"proxy.trellis.io/v1alpha1","version":"1","defaults":{"loadBalancer":"roundRobin"}}`,
		}, "sets defaults", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, tt.files)
			l, err := LoadDir(dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l.Config.Version != tt.version {
				t.Errorf("version %q, want %q", l.Config.Version, tt.version)
			}
		})
	}
}

// TestShardsMergeLikeOneDocument checks that the shards in testdata/shards load to the same configuration (and hash) as
// the equivalent single document.
func TestShardsMergeLikeOneDocument(t *testing.T) {
	l, err := LoadDir("testdata/shards")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Files) != 2 || len(l.Config.Services) != 2 || l.Config.Services[1].Name != "b" {
		t.Fatalf("unexpected merge: files %v, services %d", l.Files, len(l.Config.Services))
	}
	single := *l.Config
	single.Defaults, single.Inbound = nil, nil
	c, err := Decode(mustJSON(t, &single))
	if err != nil {
		t.Fatal(err)
	}
	c.Defaults = &Defaults{DetectTimeout: D(250 * time.Millisecond)}
	c.Inbound = &Inbound{Ports: []InboundPort{{Port: 8080}}}
	l2, err := Complete(c)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Hash != l.Hash {
		t.Errorf("merged shards hash %s, single document %s", l.Hash, l2.Hash)
	}
}

// TestLoadDirKubeletLayout loads a directory laid out the way kubelet mounts a ConfigMap: files are symlinks through
// "..data" to a timestamped directory.
func TestLoadDirKubeletLayout(t *testing.T) {
	dir := t.TempDir()
	ts := filepath.Join(dir, "..2026_01_01_00_00_00.000000001")
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "config.json"),
		[]byte(`{"apiVersion":"proxy.trellis.io/v1alpha1","version":"k"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/config.json", filepath.Join(dir, "config.json")); err != nil {
		t.Fatal(err)
	}
	l, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l.Config.Version != "k" {
		t.Errorf("version %q", l.Config.Version)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzDecode checks that the decoder never panics and that whatever it accepts and validates survives a canonical
// round trip with the same hash.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob("testdata/*/*")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"apiVersion":"proxy.trellis.io/v1alpha1","version":"1"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode(data)
		if err != nil {
			return
		}
		l, err := Complete(c)
		if err != nil {
			return
		}
		canon, err := Canonical(l.Config)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := Decode(canon)
		if err != nil {
			t.Fatalf("canonical form does not decode: %v\n%s", err, canon)
		}
		l2, err := Complete(c2)
		if err != nil {
			t.Fatalf("canonical form does not validate: %v", err)
		}
		if l2.Hash != l.Hash {
			t.Fatalf("hash changed over a round trip")
		}
	})
}
