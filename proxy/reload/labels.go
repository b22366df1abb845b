package reload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ParseLabels parses a downward API labels file as the kubelet writes it: one key="value" line per label, the value
// quoted like a Go string literal. Blank lines are ignored.
func ParseLabels(data []byte) (map[string]string, error) {
	labels := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		key, quoted, ok := strings.Cut(line, "=")
		if !ok || key == "" {
			return nil, fmt.Errorf("line %d: want key=\"value\", got %q", i+1, line)
		}
		value, err := strconv.Unquote(quoted)
		if err != nil {
			return nil, fmt.Errorf("line %d: value of %s is not a quoted string: %q", i+1, key, quoted)
		}
		labels[key] = value
	}
	return labels, nil
}

// LabelWatcher keeps the pod's labels current from a downward API file and recompiles the running configuration
// when they change, so that workload selectors follow label edits without a restart.
type LabelWatcher struct {
	// File is the downward API file of the pod's labels. Required.
	File string
	// Interval is the polling period. Default 1s.
	Interval time.Duration
	// Pipeline recompiles the running document when the labels change. Default nil: nothing is recompiled.
	Pipeline *Pipeline
	// Log receives changes and failures. Default slog.Default().
	Log *slog.Logger

	labels atomic.Pointer[map[string]string]
	mu     sync.Mutex
	last   []byte
	failed string // the last failure logged, so a lasting one is logged once
}

func (w *LabelWatcher) log() *slog.Logger {
	if w.Log != nil {
		return w.Log
	}
	return slog.Default()
}

// Labels returns the pod's labels as last read; empty before the first successful read. The map must not be
// modified.
func (w *LabelWatcher) Labels() map[string]string {
	if l := w.labels.Load(); l != nil {
		return *l
	}
	return nil
}

// Load reads the file once and reports whether the labels changed. A missing or unparsable file keeps the labels
// last read (none at first) and is returned as an error.
func (w *LabelWatcher) Load() (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	data, err := os.ReadFile(w.File)
	if err == nil && w.last != nil && bytes.Equal(data, w.last) {
		w.failed = ""
		return false, nil
	}
	var labels map[string]string
	if err == nil {
		labels, err = ParseLabels(data)
	}
	if err != nil {
		if msg := err.Error(); msg != w.failed {
			w.failed = msg
			level := slog.LevelError
			if errors.Is(err, fs.ErrNotExist) && w.last == nil {
				level = slog.LevelWarn
			}
			w.log().Log(context.Background(), level, "Pod labels not readable; workload selectors see the labels last read",
				"file", w.File, "labels", len(w.Labels()), "error", err)
		}
		return false, err
	}
	w.failed = ""
	w.last = data
	if prev := w.labels.Load(); prev != nil && maps.Equal(*prev, labels) {
		return false, nil
	}
	w.labels.Store(&labels)
	return true, nil
}

// Run polls the file every Interval until ctx ends; when the labels change it recompiles the running
// configuration.
func (w *LabelWatcher) Run(ctx context.Context) {
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
		if changed, _ := w.Load(); changed {
			w.log().Info("Pod labels changed", "labels", len(w.Labels()))
			if w.Pipeline != nil {
				_ = w.Pipeline.Recompile(SourceLabels) // logged and counted by the pipeline
			}
		}
	}
}
