package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/identity/workload"
	"github.com/trellis-mesh/trellis/internal/redirect"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/proxy/admin"
	"github.com/trellis-mesh/trellis/proxy/authz"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/mtls"
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

	// IdentityAddr is the identity service's host:port. Empty disables workload identity and mesh TLS: the proxy
	// then speaks plain TCP to every endpoint and forwards all inbound TLS untouched.
	IdentityAddr string
	// IdentityServerName is the DNS name the identity service's certificate must carry. Default: IdentityAddr's host.
	IdentityServerName string
	// TrustDomain is the mesh's trust domain. Default "cluster.local".
	TrustDomain string
	// PodNamespace and ServiceAccount name the workload's ServiceAccount; its SPIFFE ID is
	// spiffe://<TrustDomain>/ns/<PodNamespace>/sa/<ServiceAccount>. Required with IdentityAddr.
	PodNamespace, ServiceAccount string
	// PodName and PodIP describe the workload, for logs.
	PodName, PodIP string
	// TokenFile is the projected ServiceAccount token for the identity service. Default workload.DefaultTokenFile.
	TokenFile string
	// TrustBundleFile holds the mesh's trust anchors (PEM). Default workload.DefaultTrustBundleFile.
	TrustBundleFile string
	// InboundProbePaths are the paths of the kubelet's HTTP probes: inbound GET and HEAD requests for them are always
	// authorized on their port, and the port's other requests are not. Default none.
	InboundProbePaths []authz.ProbePath
	// InboundProbePorts are the container ports of the kubelet's TCP, gRPC and HTTPS probes: inbound traffic to them
	// is always authorized. Default none.
	InboundProbePorts []uint16
	// OpaquePorts are added to the configuration's opaquePorts.
	OpaquePorts []uint16
	// ClusterNetworks are the client networks the cluster-authenticated policy admits without mesh identity.
	// Default authz.DefaultClusterNetworks (RFC 1918 and IPv6 unique local addresses).
	ClusterNetworks []netip.Prefix
	// PodLabelsFile is the downward API file of the pod's labels, which inbound.workloads selectors match; it is
	// polled like the configuration. Default DefaultPodLabelsFile; a missing file means no labels.
	PodLabelsFile string
	// ConfigSource says where the configuration comes from: ConfigSourceAuto (default), ConfigSourceAPI or
	// ConfigSourceVolume.
	ConfigSource string
	// APIServer is the Kubernetes API server's URL for the API source. Default: https://$KUBERNETES_SERVICE_HOST:
	// $KUBERNETES_SERVICE_PORT.
	APIServer string
	// APITokenFile and APICAFile are the ServiceAccount token and the API server's CA for the API source. Defaults
	// apiconfig.DefaultTokenFile and apiconfig.DefaultCAFile.
	APITokenFile, APICAFile string

	// OutboundListener, InboundListener and AdminListener, when set, are served instead of listening on the
	// addresses above (Run closes them).
	OutboundListener, InboundListener, AdminListener net.Listener
	// OriginalDst overrides how a redirected connection's original destination is recovered. Default
	// SO_ORIGINAL_DST; tests without iptables set it.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
}

// DefaultTrustDomain is the trust domain used when none is configured.
const DefaultTrustDomain = "cluster.local"

// identity starts the workload certificate manager described by o, registering its metrics on reg; it returns nil
// when identity is disabled. The manager runs until ctx ends; wait returns once it has stopped.
func (o *RunOptions) identity(ctx context.Context, reg prometheus.Registerer) (creds *workload.Manager,
	wait func(), err error) {
	wait = func() {}
	if o.IdentityAddr == "" {
		return nil, wait, nil
	}
	id, err := spiffe.FromServiceAccount(or(o.TrustDomain, DefaultTrustDomain), o.PodNamespace, o.ServiceAccount)
	if err != nil {
		return nil, wait, fmt.Errorf("workload identity (--trust-domain, --pod-namespace, --service-account): %w", err)
	}
	creds, err = workload.New(workload.Options{
		ID:              id,
		Addr:            o.IdentityAddr,
		ServerName:      o.IdentityServerName,
		TokenFile:       o.TokenFile,
		TrustBundleFile: o.TrustBundleFile,
		Registerer:      reg,
		Logger:          logr.FromSlogHandler(o.Log.Handler()),
	})
	if err != nil {
		return nil, wait, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = creds.Run(ctx) // returns nil when ctx ends
	}()
	o.Log.Info("Workload identity enabled", "identity", id.String(), "identityAddr", o.IdentityAddr,
		"pod", o.PodNamespace+"/"+o.PodName, "podIP", o.PodIP)
	return creds, func() { <-done }, nil
}

// NewMeshTLS returns the mesh's connector and terminator for creds: connect timeouts follow the store's current
// configuration, and handshakes are counted in m's mtls_handshake_total.
func NewMeshTLS(creds mtls.Credentials, m *metrics.Metrics, store *snapshot.Store) (*mtls.Mesh, *mtls.Server) {
	observe := func(direction string) func(error) {
		return func(err error) {
			result := "success"
			if err != nil {
				result = mtls.Reason(err)
			}
			m.Handshake(direction, result)
		}
	}
	mesh := mtls.NewMesh(mtls.MeshOptions{
		Credentials: creds,
		ConnectTimeout: func() time.Duration {
			if s := store.Load(); s != nil {
				return s.ConnectTimeout
			}
			return time.Second
		},
		Observe: observe(metrics.Outbound),
	})
	return mesh, mtls.NewServer(mtls.ServerOptions{Credentials: creds, Observe: observe(metrics.Inbound)})
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
	idCtx, stopIdentity := context.WithCancel(context.Background())
	creds, waitIdentity, err := o.identity(idCtx, m.Registry)
	defer waitIdentity()
	defer stopIdentity()
	if err != nil {
		closeListeners(o.OutboundListener, o.InboundListener, o.AdminListener)
		return err
	}
	store := &snapshot.Store{}
	// Balancers, failure accrual, retry budgets and circuit breakers live as long as the proxy: every snapshot
	// compiles its pickers from them, so per-endpoint state survives reloads.
	traffic := snapshot.NewTraffic(snapshot.TrafficOptions{})
	m.SetOutboundSource(traffic.Stats)
	sources, err := o.newConfigSources(store, snapshot.Options{Metrics: m, MeshTLS: creds != nil,
		OpaquePorts: o.OpaquePorts, Traffic: traffic})
	if err != nil {
		closeListeners(o.OutboundListener, o.InboundListener, o.AdminListener)
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	shutdown := make(chan struct{})
	var once sync.Once
	var running atomic.Pointer[Proxy]
	adm := &admin.Server{Metrics: m, Store: store, Draining: func() bool {
		p := running.Load()
		return p != nil && p.Draining()
	}}
	if creds != nil {
		adm.Checks = append(adm.Checks, func() error {
			if !creds.Ready() {
				return errors.New("no workload certificate yet")
			}
			return nil
		})
	}
	if o.EnableShutdown {
		adm.Shutdown = func() { once.Do(func() { close(shutdown) }) }
	}
	adminLn, err := listenOn(o.AdminListener, o.AdminAddr, DefaultAdminPort)
	if err != nil {
		closeListeners(o.OutboundListener, o.InboundListener)
		return err
	}
	adminSrv := &http.Server{Handler: adm.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go adminSrv.Serve(adminLn) //nolint:errcheck // ends with Close below
	defer adminSrv.Close()

	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer sources.run(watchCtx)()
	defer stopWatch()
	if _, err := sources.volume.Reload(); err != nil {
		o.Log.Info("Waiting for a valid configuration", "dir", o.ConfigDir, "api", sources.api != nil)
		for store.Load() == nil {
			select {
			case <-ctx.Done():
				closeListeners(o.OutboundListener, o.InboundListener)
				return nil
			case <-shutdown:
				closeListeners(o.OutboundListener, o.InboundListener)
				return nil
			case <-time.After(100 * time.Millisecond):
			}
		}
	}

	po := Options{Store: store, Metrics: m, Log: o.Log, OriginalDst: o.OriginalDst,
		Authorizer: authz.NewDefault(authz.DefaultOptions{TrustDomain: or(o.TrustDomain, DefaultTrustDomain),
			ProbePaths: o.InboundProbePaths, ProbePorts: o.InboundProbePorts, ClusterNetworks: o.ClusterNetworks})}
	if creds != nil {
		po.Connector, po.Terminator = NewMeshTLS(creds, m, store)
	}
	outLn, err := listenOn(o.OutboundListener, o.OutboundAddr, DefaultOutboundPort)
	if err != nil {
		closeListeners(o.InboundListener)
		return err
	}
	inLn, err := listenOn(o.InboundListener, o.InboundAddr, DefaultInboundPort)
	if err != nil {
		outLn.Close()
		return err
	}
	if o.OriginalDst != nil {
		// Tests that inject destinations serve on ephemeral ports: the loop check must know them.
		po.OwnPorts = ownPorts(outLn, inLn, adminLn)
	}
	p := New(po)
	running.Store(p)
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

// listenOn returns ln when set, else a listener on addr (":<port>" when empty).
func listenOn(ln net.Listener, addr string, port int) (net.Listener, error) {
	if ln != nil {
		return ln, nil
	}
	return net.Listen("tcp", or(addr, fmt.Sprintf(":%d", port)))
}

func closeListeners(lns ...net.Listener) {
	for _, ln := range lns {
		if ln != nil {
			ln.Close()
		}
	}
}

func ownPorts(lns ...net.Listener) []uint16 {
	var ports []uint16
	for _, ln := range lns {
		if ta, ok := ln.Addr().(*net.TCPAddr); ok {
			ports = append(ports, uint16(ta.Port))
		}
	}
	return ports
}

// ParsePorts parses a comma-separated list of ports and inclusive ranges, such as "25,7000-7010" ("" is an empty
// list), the syntax of the config.trellis.io/*-ports annotations, and returns every port once, sorted.
func ParsePorts(s string) ([]uint16, error) {
	ranges, err := redirect.ParsePortRanges(s)
	if err != nil {
		return nil, err
	}
	var set [1 << 16]bool
	n := 0
	for _, r := range ranges {
		for p := int(r.First); p <= int(r.Last); p++ {
			if !set[p] {
				set[p] = true
				n++
			}
		}
	}
	if n == 0 {
		return nil, nil
	}
	out := make([]uint16, 0, n)
	for p := 1; p < len(set); p++ {
		if set[p] {
			out = append(out, uint16(p))
		}
	}
	return out, nil
}

// ParsePrefixes parses a comma-separated list of CIDRs ("" is an empty list).
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
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
