// Package node is the proxy's DaemonSet mode (Mesh spec.proxy.mode DaemonSet): one proxy process per node serves
// every meshed pod on it, in the "in-pod" style of ambient meshes. Meshed pods keep proxy-init's redirect to ports
// 4140 and 4143 in their own network namespace, but run no proxy: the node proxy opens those two listening sockets
// inside each local pod's namespace (package netns), so the redirected connections land on it and SO_ORIGINAL_DST
// works unchanged. Each pod gets its own proxy instance in the process: its configuration snapshot (compiled with
// the pod's namespace and labels), its traffic state, its metrics (labelled with the pod) and the certificate of its
// ServiceAccount, held in memory by one workload identity manager per identity. Inbound connections are forwarded to
// the application from a socket created in the pod's namespace; upstream connections leave from the node proxy's
// own namespace. docs/daemonset-mode.md describes the design and its trade-offs.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os/signal"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/trellis-mesh/trellis/internal/identity/workload"
	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/internal/wellknown"
	"github.com/trellis-mesh/trellis/proxy"
	"github.com/trellis-mesh/trellis/proxy/admin"
	"github.com/trellis-mesh/trellis/proxy/apiconfig"
	"github.com/trellis-mesh/trellis/proxy/authz"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/node/netns"
	"github.com/trellis-mesh/trellis/proxy/reload"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

// Options configure Run.
type Options struct {
	// Proxy holds the settings shared with sidecar mode: the listen addresses (OutboundAddr and InboundAddr are
	// opened in every pod's namespace; AdminAddr or AdminListener in the node proxy's own), the configuration
	// directory, poll interval and source, the API server credentials, the identity service, trust domain, token
	// and trust bundle files, cluster networks, detect timeout, grace period, shutdown endpoint and logger.
	// PodNamespace is the node proxy's own namespace. The per-pod fields (ServiceAccount, PodName, PodIP,
	// InboundProbePaths, InboundProbePorts, OpaquePorts, PodLabelsFile) are not used: each pod brings its own.
	Proxy proxy.RunOptions
	// NodeName is the node whose pods are served. Required.
	NodeName string
	// ConfigNamespace is where the configuration ConfigMaps are watched. Default Proxy.PodNamespace.
	ConfigNamespace string
	// ConfigName is the first configuration ConfigMap; further shards are <ConfigName>-1, -2, ... Default
	// wellknown.ProxyConfigName.
	ConfigName string
	// NetNSDir holds the network namespace files of the pods' sandboxes. Default netns.DefaultDir.
	NetNSDir string
	// Pods delivers the node's pods. Default: an APISource for NodeName with the API credentials of Proxy.
	Pods Source
	// RecheckInterval is how often a served pod's namespace file is checked (a recreated sandbox has a new
	// namespace). Default 5s.
	RecheckInterval time.Duration
	// RemovalGrace bounds draining a pod that left the node. Default 2s.
	RemovalGrace time.Duration
}

// runner is the state of Run.
type runner struct {
	o       Options
	log     *slog.Logger
	td      string
	outAddr string
	inAddr  string
	own     []uint16
	scanner *netns.Scanner
	metrics *metrics.Metrics
	gather  *gatherer
	base    *snapshot.Store
	ids     *identities
	synced  atomic.Bool

	ctx    context.Context // workloads run until it ends
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	doc  *proxyconfig.Loaded // the running document
	pods map[string]*podProxy
}

// Run serves the node's meshed pods until SIGTERM, SIGINT, /shutdown or ctx ends, then drains them within the
// grace period.
func Run(ctx context.Context, o Options) error {
	r, err := newRunner(o)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	shutdown := make(chan struct{})
	var once sync.Once
	var draining atomic.Bool

	pipeline := &reload.Pipeline{Store: r.base, Metrics: r.metrics, Log: r.log, Compile: r.compileAll}
	volume := &reload.Watcher{Dir: o.Proxy.ConfigDir, Interval: o.Proxy.PollInterval, Pipeline: pipeline}
	api, err := r.apiConfig(pipeline)
	if err != nil {
		return err
	}
	adminLn, stopAdmin, err := r.serveAdmin(draining.Load, func() { once.Do(func() { close(shutdown) }) })
	if err != nil {
		return err
	}
	defer stopAdmin()

	watchCtx, stopWatch := context.WithCancel(context.Background())
	var sources sync.WaitGroup
	defer sources.Wait()
	defer stopWatch()
	sources.Go(func() { volume.Run(watchCtx) })
	if api != nil {
		sources.Go(func() { api.Run(watchCtx) })
	}
	_, _ = volume.Reload() // a missing or bad volume is logged; the API source may deliver
	var podsDone sync.WaitGroup
	podsDone.Go(func() { r.o.Pods.Run(watchCtx, r.update) })
	r.log.Info("Node proxy started", "node", o.NodeName, "admin", adminLn.Addr(), "outbound", r.outAddr,
		"inbound", r.inAddr, "netnsDir", r.scanner.Dir, "configNamespace", r.o.ConfigNamespace, "identity", o.Proxy.IdentityAddr != "")

	select {
	case <-ctx.Done():
	case <-shutdown:
	}
	draining.Store(true)
	stopWatch()
	podsDone.Wait()
	r.log.Info("Draining", "gracePeriod", o.Proxy.GracePeriod, "pods", r.count())
	r.stopAll()
	r.ids.stopAll()
	r.log.Info("Node proxy stopped")
	return nil
}

// serveAdmin serves the admin endpoints: the proxy's (/ready once a configuration is loaded and the pods are
// listed), /metrics of every pod and identity, and /pods. shutdown is served when enabled.
func (r *runner) serveAdmin(draining func() bool, shutdown func()) (net.Listener, func(), error) {
	p := &r.o.Proxy
	adm := &admin.Server{Metrics: r.metrics, Store: r.base, Draining: draining,
		Checks: []func() error{func() error {
			if !r.synced.Load() {
				return errors.New("the node's pods are not listed yet")
			}
			return nil
		}}}
	if p.EnableShutdown {
		adm.Shutdown = shutdown
	}
	ln := p.AdminListener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", or(p.AdminAddr, fmt.Sprintf(":%d", proxy.DefaultAdminPort))); err != nil {
			return nil, nil, err
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.gather, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /pods", r.servePods)
	mux.Handle("/", adm.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	return ln, func() { srv.Close() }, nil
}

func newRunner(o Options) (*runner, error) {
	p := &o.Proxy
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.GracePeriod <= 0 {
		p.GracePeriod = proxy.DefaultGracePeriod
	}
	if o.NodeName == "" {
		return nil, errors.New("node mode needs the node's name (--node-name)")
	}
	if o.ConfigNamespace == "" {
		o.ConfigNamespace = p.PodNamespace
	}
	if o.ConfigName == "" {
		o.ConfigName = wellknown.ProxyConfigName
	}
	if o.RecheckInterval <= 0 {
		o.RecheckInterval = 5 * time.Second
	}
	if o.RemovalGrace <= 0 {
		o.RemovalGrace = 2 * time.Second
	}
	r := &runner{o: o, log: p.Log, td: or(p.TrustDomain, proxy.DefaultTrustDomain),
		outAddr: or(p.OutboundAddr, fmt.Sprintf(":%d", proxy.DefaultOutboundPort)),
		inAddr:  or(p.InboundAddr, fmt.Sprintf(":%d", proxy.DefaultInboundPort)),
		scanner: &netns.Scanner{Dir: or(o.NetNSDir, netns.DefaultDir)},
		metrics: metrics.New(), base: &snapshot.Store{}, pods: map[string]*podProxy{}}
	for _, a := range []string{r.outAddr, r.inAddr, or(p.AdminAddr, fmt.Sprintf(":%d", proxy.DefaultAdminPort))} {
		_, port, err := net.SplitHostPort(a)
		n, perr := strconv.ParseUint(port, 10, 16)
		if err != nil || perr != nil || n == 0 {
			return nil, fmt.Errorf("listen address %q: want [host]:port", a)
		}
		r.own = append(r.own, uint16(n))
	}
	r.gather = newGatherer(r.metrics.Registry)
	r.ids = &identities{log: r.log, gather: r.gather, entries: map[string]*identity{}, opts: func(id spiffe.ID) workload.Options {
		return workload.Options{ID: id, Addr: p.IdentityAddr, ServerName: p.IdentityServerName, TokenFile: p.TokenFile,
			TrustBundleFile: p.TrustBundleFile, Logger: logr.FromSlogHandler(p.Log.With("identity", id.String()).Handler())}
	}}
	if p.IdentityAddr == "" {
		r.ids = nil
	}
	if o.Pods == nil {
		host := or(p.APIServer, apiconfig.HostFromEnv())
		token, ca := or(p.APITokenFile, apiconfig.DefaultTokenFile), or(p.APICAFile, apiconfig.DefaultCAFile)
		if err := apiconfig.Available(host, token, ca); err != nil {
			return nil, fmt.Errorf("node mode watches the node's pods through the API: %w", err)
		}
		r.o.Pods = &APISource{Host: host, TokenFile: token, CAFile: ca, NodeName: o.NodeName, Log: p.Log}
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

// apiConfig returns the API configuration source the options ask for, or nil for the volume alone.
func (r *runner) apiConfig(pipeline *reload.Pipeline) (*apiconfig.Source, error) {
	p := &r.o.Proxy
	mode := or(p.ConfigSource, proxy.ConfigSourceAuto)
	switch mode {
	case proxy.ConfigSourceVolume:
		return nil, nil
	case proxy.ConfigSourceAuto, proxy.ConfigSourceAPI:
	default:
		return nil, fmt.Errorf("--config-source %q: want auto, api or volume", mode)
	}
	host := or(p.APIServer, apiconfig.HostFromEnv())
	token, ca := or(p.APITokenFile, apiconfig.DefaultTokenFile), or(p.APICAFile, apiconfig.DefaultCAFile)
	err := apiconfig.Available(host, token, ca)
	if err == nil && r.o.ConfigNamespace == "" {
		err = errors.New("the configuration's namespace is unknown (--pod-namespace)")
	}
	var src *apiconfig.Source
	if err == nil {
		src, err = apiconfig.New(apiconfig.Options{Host: host, TokenFile: token, CAFile: ca, Namespace: r.o.ConfigNamespace,
			Names: configNames(r.o.ConfigName), Pipeline: pipeline, Log: r.log})
	}
	switch {
	case err != nil && mode == proxy.ConfigSourceAPI:
		return nil, fmt.Errorf("--config-source api: %w", err)
	case err != nil:
		r.log.Info("Reading the configuration from the mounted volume only", "dir", p.ConfigDir, "reason", err)
	}
	return src, nil
}

// configNames returns the ConfigMap names a configuration may span: name, name-1, ...
func configNames(name string) []string {
	out := []string{name}
	for i := 1; i < wellknown.MaxProxyConfigMaps; i++ {
		out = append(out, fmt.Sprintf("%s-%d", name, i))
	}
	return out
}

// compileAll is the pipeline's compilation: every served pod's snapshot from l, swapped in only when all compile.
// The node's own snapshot carries the version for /config and readiness.
func (r *runner) compileAll(l *proxyconfig.Loaded) (*snapshot.Snapshot, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	next := make(map[*podProxy]*snapshot.Snapshot, len(r.pods))
	for _, pp := range r.pods {
		s, err := r.compile(pp, l)
		if err != nil {
			return nil, fmt.Errorf("pod %s: %w", pp.pod.Key(), err)
		}
		next[pp] = s
	}
	if len(r.pods) == 0 {
		// Nothing to serve yet: compile once anyway, so that a document no pod could use is refused now.
		if _, err := snapshot.Compile(l, snapshot.Options{Metrics: metrics.New(), TrustDomain: r.td}); err != nil {
			return nil, err
		}
	}
	for pp, s := range next {
		pp.store.Swap(s)
	}
	r.doc = l
	return &snapshot.Snapshot{Version: l.Config.Version, Hash: l.Hash, LoadedAt: time.Now(), Source: l.Files}, nil
}

// compile builds pp's snapshot of l, for its namespace and labels.
func (r *runner) compile(pp *podProxy, l *proxyconfig.Loaded) (*snapshot.Snapshot, error) {
	s, err := snapshot.Compile(l, snapshot.Options{Metrics: pp.metrics, Traffic: pp.traffic, MeshTLS: r.ids != nil,
		OpaquePorts: pp.opaque, PodNamespace: pp.pod.Namespace, PodLabels: pp.pod.Labels, TrustDomain: r.td})
	if err == nil && r.o.Proxy.DetectTimeout > 0 {
		s.DetectTimeout = r.o.Proxy.DetectTimeout
	}
	return s, err
}

// update makes the served pods match pods: new ones start, gone or finished ones stop, a pod whose address changed
// starts again, relabelled ones get a new snapshot.
func (r *runner) update(pods []Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.synced.Store(true)
	if r.ctx.Err() != nil {
		return
	}
	keep := map[string]bool{}
	for i := range pods {
		p := pods[i]
		if ok, _ := p.Serve(r.o.NodeName); !ok {
			continue
		}
		keep[p.UID] = true
		pp := r.pods[p.UID]
		if pp != nil && !slices.Equal(pp.pod.IPs, p.IPs) {
			r.log.Info("Pod address changed; serving it afresh", "pod", p.Key(), "ips", p.IPs)
			r.stopLocked(pp, r.o.RemovalGrace)
			pp = nil
		}
		if pp == nil {
			r.startLocked(p)
			continue
		}
		relabelled := !maps.Equal(pp.pod.Labels, p.Labels)
		pp.pod = p
		if relabelled && r.doc != nil {
			if s, err := r.compile(pp, r.doc); err != nil {
				pp.log.Error("Recompiling the configuration for the pod's new labels failed; keeping the running one", "error", err)
			} else {
				pp.store.Swap(s)
			}
		}
	}
	for uid, pp := range r.pods {
		if !keep[uid] {
			r.stopLocked(pp, r.o.RemovalGrace)
		}
	}
}

// startLocked starts serving p.
func (r *runner) startLocked(p Pod) {
	pp := &podProxy{pod: p, log: r.log.With("pod", p.Key()), store: &snapshot.Store{}, metrics: metrics.New(),
		traffic: snapshot.NewTraffic(snapshot.TrafficOptions{}), done: make(chan struct{})}
	pp.grace.Store(int64(r.o.Proxy.GracePeriod))
	pp.metrics.SetOutboundSource(pp.traffic.Stats)
	var err error
	if pp.probePaths, err = authz.ParseProbePaths(p.Annotations[wellknown.AnnotationInboundProbePaths]); err != nil {
		pp.log.Warn("Ignoring the pod's probe paths", "annotation", wellknown.AnnotationInboundProbePaths, "error", err)
	}
	if pp.probes, err = proxy.ParsePorts(p.Annotations[wellknown.AnnotationInboundProbePorts]); err != nil {
		pp.log.Warn("Ignoring the pod's probe ports", "annotation", wellknown.AnnotationInboundProbePorts, "error", err)
	}
	if pp.opaque, err = proxy.ParsePorts(p.Annotations[wellknown.AnnotationProxyOpaquePorts]); err != nil {
		pp.log.Warn("Ignoring the pod's opaque ports", "annotation", wellknown.AnnotationProxyOpaquePorts, "error", err)
	}
	pp.setState("starting", "")
	if r.ids != nil {
		id, err := spiffe.FromServiceAccount(r.td, p.Namespace, p.ServiceAccount)
		if err != nil {
			pp.log.Error("The pod has no valid identity; not serving it", "serviceAccount", p.ServiceAccount, "error", err)
			return
		}
		pp.identity = id.String()
		if pp.creds, err = r.ids.acquire(id); err != nil {
			pp.log.Error("Starting the pod's workload identity failed; not serving it", "identity", id.String(), "error", err)
			return
		}
	}
	if r.doc != nil {
		if s, err := r.compile(pp, r.doc); err != nil {
			pp.log.Error("Compiling the configuration for the pod failed", "error", err)
		} else {
			pp.store.Swap(s)
		}
	}
	r.gather.add(p.UID, pp.metrics.Registry, map[string]string{LabelWorkloadNamespace: p.Namespace, LabelWorkloadPod: p.Name})
	r.pods[p.UID] = pp
	ctx, cancel := context.WithCancel(r.ctx)
	pp.cancel = cancel
	r.wg.Go(func() {
		defer close(pp.done)
		r.servePod(ctx, pp)
	})
}

// stopLocked stops serving pp, draining its connections for at most grace, and releases its identity once done.
func (r *runner) stopLocked(pp *podProxy, grace time.Duration) {
	delete(r.pods, pp.pod.UID)
	pp.grace.Store(int64(grace))
	if pp.cancel != nil {
		pp.cancel()
	}
	r.wg.Go(func() {
		<-pp.done
		r.gather.remove(pp.pod.UID)
		if pp.creds != nil {
			r.ids.release(pp.identity)
		}
		pp.log.Info("Stopped serving the pod")
	})
}

// stopAll stops every pod within the grace period and waits.
func (r *runner) stopAll() {
	r.mu.Lock()
	r.cancel()
	for _, pp := range r.pods {
		r.stopLocked(pp, r.o.Proxy.GracePeriod)
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *runner) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pods)
}

// podProxy is the proxy of one pod.
type podProxy struct {
	log        *slog.Logger
	store      *snapshot.Store
	metrics    *metrics.Metrics
	traffic    *snapshot.Traffic
	probePaths []authz.ProbePath
	probes     []uint16
	opaque     []uint16
	identity   string            // SPIFFE ID; empty without mesh TLS
	creds      *workload.Manager // nil without mesh TLS
	cancel     context.CancelFunc
	done       chan struct{}
	grace      atomic.Int64 // drain bound when stopped, in nanoseconds

	pod Pod // guarded by runner.mu

	statusMu sync.Mutex
	state    string
	netns    string
	since    time.Time
}

func (pp *podProxy) setState(state, netnsPath string) {
	pp.statusMu.Lock()
	defer pp.statusMu.Unlock()
	if pp.state != state {
		pp.since = time.Now()
	}
	pp.state, pp.netns = state, netnsPath
}

// servePod serves pp until ctx ends, starting again (with backoff) whenever its namespace cannot be found yet or
// is replaced.
func (r *runner) servePod(ctx context.Context, pp *podProxy) {
	var backoff time.Duration
	last := ""
	for {
		err := r.servePodOnce(ctx, pp)
		if ctx.Err() != nil {
			return
		}
		pp.setState("retrying: "+err.Error(), "")
		if msg := err.Error(); msg != last {
			pp.log.Info("Not serving the pod yet", "reason", msg)
			last = msg
		}
		backoff = min(max(2*backoff, 50*time.Millisecond), 2*time.Second)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// servePodOnce finds pp's namespace, waits for its certificate and configuration, opens its listeners there and
// serves them until ctx ends or the namespace is replaced; it drains before returning.
func (r *runner) servePodOnce(ctx context.Context, pp *podProxy) error {
	h, err := r.preparePod(ctx, pp)
	if err != nil {
		return err
	}
	defer h.Close()
	p := proxy.New(r.proxyOptions(pp, h))
	outLn, err := h.Listen(ctx, r.outAddr)
	if err != nil {
		return fmt.Errorf("listening on %s in %s: %w", r.outAddr, h.Path(), err)
	}
	inLn, err := h.Listen(ctx, r.inAddr)
	if err != nil {
		outLn.Close()
		return fmt.Errorf("listening on %s in %s: %w", r.inAddr, h.Path(), err)
	}
	errs := make(chan error, 2)
	go func() { errs <- p.Serve(outLn, proxy.Outbound) }()
	go func() { errs <- p.Serve(inLn, proxy.Inbound) }()
	pp.setState("serving", h.Path())
	pp.log.Info("Serving the pod", "netns", h.Path(), "identity", pp.identity)
	recheck := time.NewTicker(r.o.RecheckInterval)
	defer recheck.Stop()
	reap := time.NewTicker(30 * time.Second)
	defer reap.Stop()
	var result error
	for result == nil && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case err := <-errs:
			result = fmt.Errorf("listener failed: %w", err)
		case <-recheck.C:
			if !h.Current() {
				r.scanner.Forget(h.Path())
				result = fmt.Errorf("the pod's network namespace %s was replaced", h.Path())
			}
		case <-reap.C:
			p.ReapIdle()
		}
	}
	dctx, cancel := context.WithTimeout(context.Background(), time.Duration(pp.grace.Load()))
	defer cancel()
	p.Shutdown(dctx)
	return result
}

// preparePod finds and opens pp's network namespace, then waits for the pod's certificate and configuration.
func (r *runner) preparePod(ctx context.Context, pp *podProxy) (*netns.Handle, error) {
	r.mu.Lock()
	ip := pp.pod.IPs[0]
	r.mu.Unlock()
	pp.setState("finding the network namespace", "")
	path, err := r.scanner.Find(ip)
	if err != nil {
		return nil, err
	}
	h, err := netns.Open(path)
	if err != nil {
		r.scanner.Forget(path)
		return nil, err
	}
	if pp.creds != nil {
		pp.setState("waiting for the workload certificate", path)
		if err := pp.creds.WaitReady(ctx); err != nil {
			h.Close()
			return nil, err
		}
	}
	pp.setState("waiting for the configuration", path)
	for pp.store.Load() == nil {
		select {
		case <-ctx.Done():
			h.Close()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return h, nil
}

// proxyOptions wires a pod's proxy: its snapshot and metrics, its identity for both directions, the application
// reached from inside its namespace.
func (r *runner) proxyOptions(pp *podProxy, h *netns.Handle) proxy.Options {
	po := proxy.Options{Store: pp.store, Metrics: pp.metrics, Log: pp.log, OwnPorts: r.own,
		Authorizer: authz.NewDefault(authz.DefaultOptions{TrustDomain: r.td, ProbePaths: pp.probePaths, ProbePorts: pp.probes,
			ClusterNetworks: r.o.Proxy.ClusterNetworks})}
	app := appConnector{ns: h, store: pp.store}
	if pp.creds == nil {
		po.Connector = app
		return po
	}
	mesh, term := proxy.NewMeshTLS(pp.creds, pp.metrics, pp.store)
	po.Connector, po.Terminator = meshConnector{appConnector: app, mesh: mesh}, term
	return po
}

// podStatus is one entry of /pods.
type podStatus struct {
	Pod      string    `json:"pod"`
	UID      string    `json:"uid"`
	IPs      []string  `json:"ips"`
	Identity string    `json:"identity,omitempty"`
	State    string    `json:"state"`
	Since    time.Time `json:"since"`
	NetNS    string    `json:"netns,omitempty"`
}

// servePods answers GET /pods: the pods the node proxy serves and the state of each.
func (r *runner) servePods(w http.ResponseWriter, _ *http.Request) {
	r.mu.Lock()
	out := make([]podStatus, 0, len(r.pods))
	for _, pp := range r.pods {
		st := podStatus{Pod: pp.pod.Key(), UID: pp.pod.UID, Identity: pp.identity}
		for _, ip := range pp.pod.IPs {
			st.IPs = append(st.IPs, ip.String())
		}
		pp.statusMu.Lock()
		st.State, st.Since, st.NetNS = pp.state, pp.since, pp.netns
		pp.statusMu.Unlock()
		out = append(out, st)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b podStatus) int {
		if a.Pod < b.Pod {
			return -1
		}
		if a.Pod > b.Pod {
			return 1
		}
		return 0
	})
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func or(v, def string) string {
	if v != "" {
		return v
	}
	return def
}

// identities holds one workload identity manager per SPIFFE ID, shared by the pods of that ServiceAccount, and
// stops it when the last of them is gone.
type identities struct {
	log    *slog.Logger
	gather *gatherer
	opts   func(spiffe.ID) workload.Options

	mu      sync.Mutex
	entries map[string]*identity
}

type identity struct {
	mgr    *workload.Manager
	refs   int
	cancel context.CancelFunc
	done   chan struct{}
}

// acquire returns the running manager of id, starting it if needed.
func (ids *identities) acquire(id spiffe.ID) (*workload.Manager, error) {
	ids.mu.Lock()
	defer ids.mu.Unlock()
	if e := ids.entries[id.String()]; e != nil {
		e.refs++
		return e.mgr, nil
	}
	o := ids.opts(id)
	reg := prometheus.NewRegistry()
	o.Registerer = reg
	mgr, err := workload.New(o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &identity{mgr: mgr, refs: 1, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(e.done)
		_ = mgr.Run(ctx) // returns nil when ctx ends
	}()
	ids.entries[id.String()] = e
	ids.gather.add("identity "+id.String(), reg, map[string]string{LabelWorkloadIdentity: id.String()})
	ids.log.Info("Workload identity started", "identity", id.String())
	return mgr, nil
}

// release drops a reference to id's manager and stops it with the last one.
func (ids *identities) release(id string) {
	ids.mu.Lock()
	e := ids.entries[id]
	if e == nil {
		ids.mu.Unlock()
		return
	}
	e.refs--
	if e.refs > 0 {
		ids.mu.Unlock()
		return
	}
	delete(ids.entries, id)
	ids.mu.Unlock()
	e.cancel()
	<-e.done
	ids.gather.remove("identity " + id)
	ids.log.Info("Workload identity stopped: no pod of it is left on the node", "identity", id)
}

// stopAll stops every manager.
func (ids *identities) stopAll() {
	if ids == nil {
		return
	}
	ids.mu.Lock()
	entries := slices.Collect(maps.Values(ids.entries))
	ids.entries = map[string]*identity{}
	ids.mu.Unlock()
	for _, e := range entries {
		e.cancel()
		<-e.done
	}
}
