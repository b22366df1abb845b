// Package reload keeps the proxy's configuration snapshot in step with its mounted ConfigMap directory.
//
// It polls rather than using inotify: kubelet updates a ConfigMap volume by writing a new timestamped directory and
// atomically swapping the "..data" symlink, and inotify watches on the old target go stale across such swaps (and do
// not work at all on some volume types), while a poll of one readlink and a few stats every interval is negligible
// work, needs no extra dependency and sees every kind of update the same way.
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
	Success   = "success"
	Unchanged = "unchanged"
	Failure   = "failure"
)

// Watcher loads the configuration from Dir into Store.
type Watcher struct {
	// Dir is the mounted configuration directory. Required.
	Dir string
	// Interval is the polling period. Default 1s.
	Interval time.Duration
	// Store receives new snapshots. Required.
	Store *snapshot.Store
	// Compile builds a snapshot from a loaded document. Required.
	Compile func(*proxyconfig.Loaded) (*snapshot.Snapshot, error)
	// Metrics counts reloads and publishes the running version. Required.
	Metrics *metrics.Metrics
	// Log receives reload outcomes. Default slog.Default().
	Log *slog.Logger

	mu          sync.Mutex
	fingerprint string
}

// Reload loads the directory once: a document with the running hash is ignored ("unchanged"); a valid new one is
// compiled and swapped in ("success"); anything else leaves the running snapshot in place ("failure") and is returned.
func (w *Watcher) Reload() (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fingerprint = fingerprint(w.Dir)
	return w.reload()
}

func (w *Watcher) log() *slog.Logger {
	if w.Log != nil {
		return w.Log
	}
	return slog.Default()
}

func (w *Watcher) reload() (string, error) {
	l, err := proxyconfig.LoadDir(w.Dir)
	if err == nil {
		if cur := w.Store.Load(); cur != nil && cur.Hash == l.Hash {
			w.Metrics.Reload(Unchanged)
			return Unchanged, nil
		}
		var s *snapshot.Snapshot
		if s, err = w.Compile(l); err == nil {
			prev := w.Store.Swap(s)
			w.Metrics.Reload(Success)
			w.Metrics.SetConfig(s.Version, s.Hash)
			args := []any{"version", s.Version, "hash", s.Hash, "files", len(l.Files)}
			if prev != nil {
				args = append(args, "previousVersion", prev.Version)
			}
			w.log().Info("Configuration loaded", args...)
			return Success, nil
		}
	}
	w.Metrics.Reload(Failure)
	keep := "none"
	if cur := w.Store.Load(); cur != nil {
		keep = cur.Version
	}
	w.log().Error("Configuration rejected; keeping the running one", "dir", w.Dir, "runningVersion", keep,
		"error", err)
	return Failure, fmt.Errorf("loading %s: %w", w.Dir, err)
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
			w.reload() //nolint:errcheck // logged and counted by reload
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
