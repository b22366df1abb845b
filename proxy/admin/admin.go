// Package admin serves the proxy's admin endpoints on port 4191: /metrics, /ready, /live, /config and, when enabled,
// /shutdown.
package admin

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

// Server holds what the admin endpoints report on.
type Server struct {
	// Metrics is served on /metrics. Required.
	Metrics *metrics.Metrics
	// Store is reported on /config; /ready fails until it holds a snapshot. Required.
	Store *snapshot.Store
	// Draining reports that shutdown has begun; /ready then fails. Optional.
	Draining func() bool
	// Checks are further readiness conditions (such as a first workload certificate): /ready fails with the first
	// error one returns.
	Checks []func() error
	// Shutdown, when set, is served on POST /shutdown (enabled by the proxy's --enable-shutdown flag); otherwise
	// /shutdown answers 404.
	Shutdown func()
}

// ConfigStatus is the JSON body of /config.
type ConfigStatus struct {
	// Version is the running document's version.
	Version string `json:"version"`
	// Hash is the running document's content hash ("sha256:<hex>").
	Hash string `json:"hash"`
	// LoadedAt is when the running snapshot was installed.
	LoadedAt time.Time `json:"loadedAt"`
	// Files are the document files it was read from.
	Files []string `json:"files,omitempty"`
}

// Handler returns the admin mux.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("live\n")) })
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case s.Draining != nil && s.Draining():
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
		case s.Store.Load() == nil:
			http.Error(w, "no configuration loaded", http.StatusServiceUnavailable)
		default:
			for _, check := range s.Checks {
				if err := check(); err != nil {
					http.Error(w, err.Error(), http.StatusServiceUnavailable)
					return
				}
			}
			_, _ = w.Write([]byte("ready\n"))
		}
	})
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, _ *http.Request) {
		snap := s.Store.Load()
		if snap == nil {
			http.Error(w, "no configuration loaded", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ConfigStatus{Version: snap.Version, Hash: snap.Hash, LoadedAt: snap.LoadedAt,
			Files: snap.Source})
	})
	mux.HandleFunc("/shutdown", func(w http.ResponseWriter, r *http.Request) {
		if s.Shutdown == nil {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "use POST", http.StatusMethodNotAllowed)
			return
		}
		_, _ = w.Write([]byte("shutting down\n"))
		go s.Shutdown()
	})
	return mux
}
