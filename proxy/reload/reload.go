// Package reload keeps the proxy's configuration snapshot current. A Pipeline turns documents into the running
// snapshot (decode, merge shards, default, validate, hash, compile, atomic swap); its sources are the mounted
// ConfigMap volume (Watcher), the Kubernetes API (package proxy/apiconfig) and the pod's labels (LabelWatcher),
// whose changes recompile the running document.
//
// The volume is polled rather than watched with inotify: kubelet updates a ConfigMap volume by writing a new
// timestamped directory and atomically swapping the "..data" symlink, and inotify watches on the old target go stale
// across such swaps (and do not work at all on some volume types), while a poll of one readlink and a few stats every
// interval is negligible work, needs no extra dependency and sees every kind of update the same way.
package reload

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

// Results of a reload, the values of config_reload_total's result label.
const (
	// Success: a new document was compiled and swapped in.
	Success = "success"
	// Unchanged: the document has the running hash; nothing changed.
	Unchanged = "unchanged"
	// Stale: the volume holds an older version than the API watch delivered; it is ignored.
	Stale = "stale"
	// Failure: the document was refused; the running snapshot stays.
	Failure = "failure"
)

// Sources of documents, the values of config_reload_total's source label.
const (
	// SourceVolume is the mounted ConfigMap volume.
	SourceVolume = "volume"
	// SourceAPI is the watch of the ConfigMaps through the Kubernetes API.
	SourceAPI = "api"
	// SourceLabels is a recompilation of the running document after the pod's labels changed.
	SourceLabels = "labels"
)

// apiHistory bounds how many hashes of documents the API watch delivered are remembered to recognise stale
// volume contents.
const apiHistory = 64

// Pipeline installs documents from several sources into Store. The API watch delivers versions in the order the
// API server stores them, so each of its documents is the newest; while it is synced, the volume (which the kubelet
// syncs from the same API, later) is ignored when it differs from the running document. Without a synced watch, a
// volume document the watch delivered before is an older version and is ignored too; any other is loaded.
type Pipeline struct {
	// Store receives new snapshots. Required.
	Store *snapshot.Store
	// Compile builds a snapshot from a loaded document. Required.
	Compile func(*proxyconfig.Loaded) (*snapshot.Snapshot, error)
	// Metrics counts reloads and publishes the running version. Required.
	Metrics *metrics.Metrics
	// Log receives reload outcomes. Default slog.Default().
	Log *slog.Logger

	mu        sync.Mutex
	running   *proxyconfig.Loaded // the document of the running snapshot
	apiSynced bool
	apiSeen   []string // hashes the API watch delivered, oldest first
}

func (p *Pipeline) log() *slog.Logger {
	if p.Log != nil {
		return p.Log
	}
	return slog.Default()
}

// SetAPISynced tells the pipeline whether the API watch is synced: listed and watching without error.
func (p *Pipeline) SetAPISynced(synced bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.apiSynced = synced
}

// Offer installs a document from source, loaded by load (nil error: a decoded, merged, defaulted and validated
// document). It returns the result: a document with the running hash is ignored (Unchanged), a volume document
// older than what the API delivered too (Stale), a valid new one is compiled and swapped in (Success); anything else
// leaves the running snapshot in place (Failure) and is returned as an error.
func (p *Pipeline) Offer(source, origin string, load func() (*proxyconfig.Loaded, error)) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, err := load()
	if err == nil {
		if source == SourceAPI {
			p.remember(l.Hash)
		}
		if cur := p.Store.Load(); cur != nil && cur.Hash == l.Hash {
			p.Metrics.Reload(source, Unchanged)
			p.running = l
			return Unchanged, nil
		}
		if source == SourceVolume && p.Store.Load() != nil && (p.apiSynced || p.seen(l.Hash)) {
			p.Metrics.Reload(source, Stale)
			p.log().Info("Ignoring the volume's configuration: the API watch delivered a newer one",
				"volumeVersion", l.Config.Version, "volumeHash", l.Hash, "runningVersion", p.Store.Load().Version)
			return Stale, nil
		}
		if err = p.install(source, l); err == nil {
			return Success, nil
		}
	}
	p.Metrics.Reload(source, Failure)
	keep := "none"
	if cur := p.Store.Load(); cur != nil {
		keep = cur.Version
	}
	p.log().Error("Configuration rejected; keeping the running one", "source", source, "from", origin,
		"runningVersion", keep, "error", err)
	return Failure, fmt.Errorf("loading %s: %w", origin, err)
}

// install compiles l and swaps it in; it returns the compilation error.
func (p *Pipeline) install(source string, l *proxyconfig.Loaded) error {
	s, err := p.Compile(l)
	if err != nil {
		return err
	}
	prev := p.Store.Swap(s)
	p.running = l
	p.Metrics.Reload(source, Success)
	p.Metrics.SetConfig(s.Version, s.Hash)
	args := []any{"source", source, "version", s.Version, "hash", s.Hash, "files", len(l.Files)}
	if prev != nil {
		args = append(args, "previousVersion", prev.Version)
	}
	p.log().Info("Configuration loaded", args...)
	return nil
}

// Recompile compiles the running document again and swaps it in, for inputs of the compilation other than the
// document (the pod's labels); source labels the result. It does nothing before the first document.
func (p *Pipeline) Recompile(source string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running == nil {
		return nil
	}
	if err := p.install(source, p.running); err != nil {
		p.Metrics.Reload(source, Failure)
		p.log().Error("Recompiling the configuration failed; keeping the running snapshot", "source", source,
			"error", err)
		return err
	}
	return nil
}

func (p *Pipeline) remember(hash string) {
	if n := len(p.apiSeen); n > 0 && p.apiSeen[n-1] == hash {
		return
	}
	if len(p.apiSeen) == apiHistory {
		p.apiSeen = append(p.apiSeen[:0], p.apiSeen[1:]...)
	}
	p.apiSeen = append(p.apiSeen, hash)
}

func (p *Pipeline) seen(hash string) bool {
	for _, h := range p.apiSeen {
		if h == hash {
			return true
		}
	}
	return false
}

// Watcher loads the configuration from the mounted directory Dir.
type Watcher struct {
	// Dir is the mounted configuration directory. Required.
	Dir string
	// Interval is the polling period. Default 1s.
	Interval time.Duration
	// Pipeline installs what the watcher reads. Default: a Pipeline of Store, Compile, Metrics and Log.
	Pipeline *Pipeline
	// Store, Compile, Metrics and Log make the default Pipeline; required without Pipeline.
	Store   *snapshot.Store
	Compile func(*proxyconfig.Loaded) (*snapshot.Snapshot, error)
	Metrics *metrics.Metrics
	Log     *slog.Logger

	mu          sync.Mutex
	fingerprint string
	once        sync.Once
}

func (w *Watcher) pipeline() *Pipeline {
	w.once.Do(func() {
		if w.Pipeline == nil {
			w.Pipeline = &Pipeline{Store: w.Store, Compile: w.Compile, Metrics: w.Metrics, Log: w.Log}
		}
	})
	return w.Pipeline
}

// Reload loads the directory once (see Pipeline.Offer).
func (w *Watcher) Reload() (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fingerprint = fingerprint(w.Dir)
	return w.reload()
}

func (w *Watcher) reload() (string, error) {
	return w.pipeline().Offer(SourceVolume, w.Dir, func() (*proxyconfig.Loaded, error) {
		return proxyconfig.LoadDir(w.Dir)
	})
}

// Run polls Dir every Interval and reloads when its fingerprint (the "..data" link target and each document's size,
// modification time and inode) changes. It returns when ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	iv := w.Interval
	if iv <= 0 {
		iv = time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		if fp := fingerprint(w.Dir); fp != w.fingerprint {
			w.fingerprint = fp
			w.reload() //nolint:errcheck // logged and counted by the pipeline
		}
		w.mu.Unlock()
	}
}

// fingerprint summarises what a reload would read, cheaply.
func fingerprint(dir string) string {
	var b strings.Builder
	if target, err := os.Readlink(filepath.Join(dir, "..data")); err == nil {
		b.WriteString(target)
		b.WriteByte('|')
	}
	files, err := proxyconfig.DocumentFiles(dir)
	if err != nil {
		b.WriteString(err.Error())
		return b.String()
	}
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			fmt.Fprintf(&b, "%s:%v|", f, err)
			continue
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		fmt.Fprintf(&b, "%s:%d:%d:%d|", f, fi.Size(), fi.ModTime().UnixNano(), ino)
	}
	return b.String()
}
