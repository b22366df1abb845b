package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/admin"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/reload"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

// Defaults of RunOptions.
const (
	// DefaultPollInterval is how often the configuration directory is checked.
	DefaultPollInterval = time.Second
	// DefaultGracePeriod bounds draining on shutdown.
	DefaultGracePeriod = 30 * time.Second
)

// RunOptions configure Run; cmd/proxy fills them from flags and environment.
type RunOptions struct {
	// OutboundAddr, InboundAddr and AdminAddr are the listen addresses. Defaults ":4140", ":4143", ":4191".
	OutboundAddr, InboundAddr, AdminAddr string
	// ConfigDir is the mounted configuration directory. Required.
	ConfigDir string
	// PollInterval is how often ConfigDir is checked for changes. Default 1s.
	PollInterval time.Duration
	// EnableShutdown serves POST /shutdown on the admin port. Default false.
	EnableShutdown bool
	// GracePeriod bounds draining after SIGTERM or /shutdown. Default 30s.
	GracePeriod time.Duration
	// DetectTimeout, when positive, overrides the document's defaults.detectTimeout. Default 0: use the document's.
	DetectTimeout time.Duration
	// Log is the logger. Default slog.Default().
	Log *slog.Logger
}

// Run starts the admin server, waits for a valid configuration, serves the outbound and inbound listeners and keeps
// the configuration current, until SIGTERM, SIGINT, /shutdown or ctx ends; it then drains within the grace period.
func Run(ctx context.Context, o RunOptions) error {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.GracePeriod <= 0 {
		o.GracePeriod = 30 * time.Second
	}
	m := metrics.New()
	store := &snapshot.Store{}
	w := &reload.Watcher{Dir: o.ConfigDir, Interval: o.PollInterval, Store: store, Metrics: m, Log: o.Log,
		Compile: func(l *proxyconfig.Loaded) (*snapshot.Snapshot, error) {
			s, err := snapshot.Compile(l, snapshot.Options{Metrics: m})
			if err == nil && o.DetectTimeout > 0 {
				s.DetectTimeout = o.DetectTimeout
			}
			return s, err
		}}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	shutdown := make(chan struct{})
	var once sync.Once
	var running atomic.Pointer[Proxy]
	adm := &admin.Server{Metrics: m, Store: store, Draining: func() bool {
		p := running.Load()
		return p != nil && p.Draining()
	}}
	if o.EnableShutdown {
		adm.Shutdown = func() { once.Do(func() { close(shutdown) }) }
	}
	adminLn, err := net.Listen("tcp", or(o.AdminAddr, fmt.Sprintf(":%d", DefaultAdminPort)))
	if err != nil {
		return err
	}
	adminSrv := &http.Server{Handler: adm.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go adminSrv.Serve(adminLn) //nolint:errcheck // ends with Close below
	defer adminSrv.Close()

	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go w.Run(watchCtx)
	if _, err := w.Reload(); err != nil {
		o.Log.Info("Waiting for a valid configuration", "dir", o.ConfigDir)
		for store.Load() == nil {
			select {
			case <-ctx.Done():
				return nil
			case <-shutdown:
				return nil
			case <-time.After(100 * time.Millisecond):
			}
		}
	}

	p := New(Options{Store: store, Metrics: m, Log: o.Log})
	running.Store(p)
	outLn, err := net.Listen("tcp", or(o.OutboundAddr, fmt.Sprintf(":%d", DefaultOutboundPort)))
	if err != nil {
		return err
	}
	inLn, err := net.Listen("tcp", or(o.InboundAddr, fmt.Sprintf(":%d", DefaultInboundPort)))
	if err != nil {
		outLn.Close()
		return err
	}
	errs := make(chan error, 2)
	go func() { errs <- p.Serve(outLn, Outbound) }()
	go func() { errs <- p.Serve(inLn, Inbound) }()
	o.Log.Info("Proxy started", "outbound", outLn.Addr(), "inbound", inLn.Addr(), "admin", adminLn.Addr())
	reap := time.NewTicker(30 * time.Second)
	defer reap.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-shutdown:
			done = true
		case err := <-errs:
			if err != nil {
				o.Log.Error("Listener failed", "error", err)
				done = true
			}
		case <-reap.C:
			p.ReapIdle()
		}
	}
	o.Log.Info("Draining", "gracePeriod", o.GracePeriod, "connections", p.Active())
	dctx, cancel := context.WithTimeout(context.Background(), o.GracePeriod)
	defer cancel()
	p.Shutdown(dctx)
	if errors.Is(dctx.Err(), context.DeadlineExceeded) {
		o.Log.Warn("Grace period ended with connections still open; they were closed")
	}
	o.Log.Info("Proxy stopped")
	return nil
}

func or(v, def string) string {
	if v != "" {
		return v
	}
	return def
}

// LogLevel parses a level name: debug, info, warn or error.
func LogLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}
