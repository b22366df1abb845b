// Package metrics defines the proxy's Prometheus series, Linkerd-compatible golden signals among them. Label sets are
// resolved once per service, route or connection class into cached children, so the request path only increments
// counters and observes histograms.
package metrics

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Direction label values.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// LatencyBucketsMs are response_latency_ms buckets, the same as Linkerd's.
var LatencyBucketsMs = []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500, 1000, 2000, 3000,
	4000, 5000, 10000, 20000, 30000, 40000, 50000}

var (
	httpLabels     = []string{"direction", "authority", "tls", "dst_namespace", "dst_service", "route", "client_id", "server_id"}
	responseLabels = append(append([]string{}, httpLabels...), "status_code", "classification")
	latencyLabels  = append(append([]string{}, httpLabels...), "status_code")
	tcpLabels      = []string{"direction", "tls", "dst_namespace", "dst_service", "client_id", "server_id"}
	closeLabels    = append(append([]string{}, tcpLabels...), "errno")
)

// Metrics holds the proxy's collectors and the caches of their children.
type Metrics struct {
	// Registry is what /metrics serves.
	Registry *prometheus.Registry

	requests  *prometheus.CounterVec
	responses *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	tcpOpen   *prometheus.CounterVec
	tcpClose  *prometheus.CounterVec
	tcpConns  *prometheus.GaugeVec
	tcpRead   *prometheus.CounterVec
	tcpWrite  *prometheus.CounterVec
	detect    *prometheus.CounterVec
	reloads   *prometheus.CounterVec
	info      *prometheus.GaugeVec
	authz     [2][2]*prometheus.CounterVec // [http, tcp][deny, allow]
	handshake *prometheus.CounterVec
	out       *outbound

	mu     sync.Mutex
	routes map[HTTPLabels]*Route
	tcps   map[TCPLabels]*TCP

	authzMu    sync.RWMutex
	authzCache map[AuthzLabels]prometheus.Counter
}

// New registers the proxy's series, plus the Go runtime and process collectors, in a new registry.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "request_total",
			Help: "HTTP requests received by the proxy."}, httpLabels),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "response_total",
			Help: "HTTP responses sent by the proxy, by status code and classification (success or failure)."},
			responseLabels),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "response_latency_ms",
			Help:    "Time from receiving a request to receiving the response headers, in milliseconds.",
			Buckets: LatencyBucketsMs}, latencyLabels),
		tcpOpen: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_open_total",
			Help: "TCP connections opened."}, tcpLabels),
		tcpClose: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_close_total",
			Help: "TCP connections closed, by errno (empty for a clean close)."}, closeLabels),
		tcpConns: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tcp_open_connections",
			Help: "TCP connections currently open."}, tcpLabels),
		tcpRead: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_read_bytes_total",
			Help: "Bytes read from clients (the peer that opened the connection)."}, tcpLabels),
		tcpWrite: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_write_bytes_total",
			Help: "Bytes written to clients (the peer that opened the connection)."}, tcpLabels),
		detect: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "protocol_detect_total",
			Help: "Protocol detection results: http1, http2, tls, opaque, timeout, closed, or skipped (opaque port)."},
			[]string{"direction", "result"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "config_reload_total",
			Help: "Configuration loads by result (success; unchanged: same hash, ignored; stale: an older version, " +
				"ignored; failure: last good kept) and source (volume, api, labels)."},
			[]string{"result", "source"}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "config_info",
			Help: "The running configuration: 1 for its version and hash."}, []string{"version", "hash"}),
		handshake: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mtls_handshake_total",
			Help: "Mesh TLS handshakes by direction and result: success, or the failure reason " +
				"(identity_mismatch, untrusted_peer, no_certificate, protocol, timeout, peer_refused, other)."},
			[]string{"direction", "result"}),
		routes:     map[HTTPLabels]*Route{},
		tcps:       map[TCPLabels]*TCP{},
		authzCache: map[AuthzLabels]prometheus.Counter{},
		out:        newOutbound(),
	}
	for i, kind := range []struct{ proto, what string }{{"http", "requests"}, {"tcp", "connections"}} {
		labels := authzTCPLabels
		if kind.proto == "http" {
			labels = authzHTTPLabels
		}
		for j, result := range []struct{ name, what string }{{"deny", "denied"}, {"allow", "allowed"}} {
			m.authz[i][j] = prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "inbound_" + kind.proto + "_authz_" + result.name + "_total",
				Help: "Inbound " + kind.what + " " + result.what + " by authorization, by the rule that decided.",
			}, labels)
		}
	}
	m.Registry.MustRegister(m.requests, m.responses, m.latency, m.tcpOpen, m.tcpClose, m.tcpConns, m.tcpRead,
		m.tcpWrite, m.detect, m.reloads, m.info, m.handshake, m.authz[0][0], m.authz[0][1], m.authz[1][0],
		m.authz[1][1], m.out.retries, m.out.rejected, m.out, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

var (
	authzTCPLabels  = []string{"target_port", "rule", "tls", "client_id"}
	authzHTTPLabels = append(append([]string{}, authzTCPLabels...), "route", "authority")
)

// AuthzLabels identify an inbound authorization decision.
type AuthzLabels struct {
	// HTTP selects the inbound_http_authz_* series (a request); otherwise inbound_tcp_authz_* (a connection).
	HTTP bool
	// Allow selects the *_allow_total series; otherwise *_deny_total.
	Allow bool
	// Port is the inbound (application) port, the target_port label.
	Port uint16
	// Rule names the rule that decided, e.g. "default:all-authenticated" or "probe".
	Rule string
	// TLS is "true" when the client came over mesh TLS, else "false".
	TLS string
	// ClientID is the client's SPIFFE ID; empty without mesh TLS.
	ClientID string
	// Route is the inbound route's name (HTTP only).
	Route string
	// Authority is the request's Host, as in the inbound request_total series (HTTP only).
	Authority string
}

// Authz counts one authorization decision. Label sets are cached: after the first decision of a kind, counting takes
// a read lock and a map lookup.
func (m *Metrics) Authz(l AuthzLabels) {
	m.authzMu.RLock()
	c, ok := m.authzCache[l]
	m.authzMu.RUnlock()
	if !ok {
		m.authzMu.Lock()
		if c, ok = m.authzCache[l]; !ok {
			kind, result := 1, 0
			if l.HTTP {
				kind = 0
			}
			if l.Allow {
				result = 1
			}
			l.Rule, l.ClientID, l.Route = strings.Clone(l.Rule), strings.Clone(l.ClientID), strings.Clone(l.Route)
			l.Authority = strings.Clone(l.Authority)
			v := []string{strconv.Itoa(int(l.Port)), l.Rule, l.TLS, l.ClientID}
			if l.HTTP {
				v = append(v, l.Route, l.Authority)
			}
			c = m.authz[kind][result].WithLabelValues(v...)
			m.authzCache[l] = c
		}
		m.authzMu.Unlock()
	}
	c.Inc()
}

// Handshake counts one mesh TLS handshake of a direction with its result: "success" or a failure reason.
func (m *Metrics) Handshake(direction, result string) {
	m.handshake.WithLabelValues(direction, result).Inc()
}

// HTTPLabels identify an HTTP traffic class: a route of a service in one direction.
type HTTPLabels struct {
	// Direction is "inbound" or "outbound".
	Direction string
	// Authority is the service authority (outbound) or the request's Host (inbound).
	Authority string
	// TLS is "true" when the hop is mesh TLS, else "false".
	TLS string
	// DstNamespace and DstService name the destination service; empty when unknown.
	DstNamespace, DstService string
	// Route is the matched route's name; empty for the service's default route.
	Route string
	// ClientID (inbound) and ServerID (outbound) are the peer's SPIFFE ID under mesh TLS; empty otherwise.
	ClientID, ServerID string
}

func (l HTTPLabels) values() []string {
	return []string{l.Direction, l.Authority, l.TLS, l.DstNamespace, l.DstService, l.Route, l.ClientID, l.ServerID}
}

// Route records requests and responses of one HTTP traffic class.
type Route struct {
	requests  prometheus.Counter
	responses *prometheus.CounterVec
	latency   prometheus.ObserverVec
	statuses  [600]atomic.Pointer[status]
}

type status struct {
	success, failure prometheus.Counter
	latency          prometheus.Observer
}

// Route returns the cached recorder for l, creating it on first use. Call it when compiling a snapshot or opening a
// connection, not per request.
func (m *Metrics) Route(l HTTPLabels) *Route {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.routes[l]; ok {
		return r
	}
	v := l.values()
	r := &Route{
		requests:  m.requests.WithLabelValues(v...),
		responses: m.responses.MustCurryWith(curry(httpLabels, v)),
		latency:   m.latency.MustCurryWith(curry(httpLabels, v)),
	}
	m.routes[l] = r
	return r
}

func curry(names, values []string) prometheus.Labels {
	l := make(prometheus.Labels, len(names))
	for i, n := range names {
		l[n] = values[i]
	}
	return l
}

// Request counts one request.
func (r *Route) Request() { r.requests.Inc() }

// Response counts one response with its status code and whether it failed (5xx, or a gRPC error status), and
// observes the latency to its headers. Codes outside 100-599 are recorded as 0.
func (r *Route) Response(code int, failed bool, latency time.Duration) {
	if code < 100 || code >= len(r.statuses) {
		code = 0
	}
	s := r.statuses[code].Load()
	if s == nil {
		c := strconv.Itoa(code)
		s = &status{
			success: r.responses.WithLabelValues(c, "success"),
			failure: r.responses.WithLabelValues(c, "failure"),
			latency: r.latency.WithLabelValues(c),
		}
		if !r.statuses[code].CompareAndSwap(nil, s) {
			s = r.statuses[code].Load()
		}
	}
	if failed {
		s.failure.Inc()
	} else {
		s.success.Inc()
	}
	s.latency.Observe(float64(latency) / float64(time.Millisecond))
}

// TCPLabels identify a class of TCP connections.
type TCPLabels struct {
	// Direction is "inbound" or "outbound".
	Direction string
	// TLS is "true" when the connection is mesh TLS, else "false".
	TLS string
	// DstNamespace and DstService name the destination service; empty when unknown.
	DstNamespace, DstService string
	// ClientID (inbound) and ServerID (outbound) are the peer's SPIFFE ID under mesh TLS; empty otherwise.
	ClientID, ServerID string
}

// TCP records connections of one class.
type TCP struct {
	open  prometheus.Counter
	conns prometheus.Gauge
	// Read counts bytes read from the client; Write counts bytes written to it.
	Read, Write prometheus.Counter
	closes      *prometheus.CounterVec
	mu          sync.Mutex
	byErrno     map[string]prometheus.Counter
}

// TCP returns the cached recorder for l, creating it on first use.
func (m *Metrics) TCP(l TCPLabels) *TCP {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.tcps[l]; ok {
		return t
	}
	v := []string{l.Direction, l.TLS, l.DstNamespace, l.DstService, l.ClientID, l.ServerID}
	t := &TCP{
		open:    m.tcpOpen.WithLabelValues(v...),
		conns:   m.tcpConns.WithLabelValues(v...),
		Read:    m.tcpRead.WithLabelValues(v...),
		Write:   m.tcpWrite.WithLabelValues(v...),
		closes:  m.tcpClose.MustCurryWith(curry(tcpLabels, v)),
		byErrno: map[string]prometheus.Counter{},
	}
	m.tcps[l] = t
	return t
}

// Open counts an opened connection.
func (t *TCP) Open() {
	t.open.Inc()
	t.conns.Inc()
}

// Close counts a closed connection and the error that ended it (nil for a clean close).
func (t *TCP) Close(err error) {
	t.conns.Dec()
	e := Errno(err)
	t.mu.Lock()
	c, ok := t.byErrno[e]
	if !ok {
		c = t.closes.WithLabelValues(e)
		t.byErrno[e] = c
	}
	t.mu.Unlock()
	c.Inc()
}

// Errno names the error that closed a connection: "" for none, the errno name (ECONNRESET, EPIPE, …), ETIMEDOUT for
// a deadline, or "EOTHER".
func Errno(err error) string {
	if err == nil {
		return ""
	}
	var en syscall.Errno
	switch {
	case errors.As(err, &en):
		return errnoName(en)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "ETIMEDOUT"
	}
	return "EOTHER"
}

func errnoName(en syscall.Errno) string {
	switch en {
	case syscall.ECONNRESET:
		return "ECONNRESET"
	case syscall.EPIPE:
		return "EPIPE"
	case syscall.ECONNREFUSED:
		return "ECONNREFUSED"
	case syscall.ETIMEDOUT:
		return "ETIMEDOUT"
	case syscall.EHOSTUNREACH:
		return "EHOSTUNREACH"
	case syscall.ENETUNREACH:
		return "ENETUNREACH"
	}
	return "EOTHER"
}

// Detector counts protocol detection results for one direction.
type Detector struct {
	byResult map[string]prometheus.Counter
}

// Detector returns the detection counters for direction, with every result precreated.
func (m *Metrics) Detector(direction string) *Detector {
	d := &Detector{byResult: map[string]prometheus.Counter{}}
	for _, r := range []string{"http1", "http2", "tls", "opaque", "timeout", "closed", "skipped"} {
		d.byResult[r] = m.detect.WithLabelValues(direction, r)
	}
	return d
}

// Count counts one result ("http1", "http2", "tls", "opaque", "timeout", "closed" or "skipped").
func (d *Detector) Count(result string) {
	if c, ok := d.byResult[result]; ok {
		c.Inc()
	}
}

// Reload counts a configuration load from a source ("volume", "api", or "labels" for a recompilation after the
// pod's labels changed) with its result: "success", "unchanged", "stale" or "failure".
func (m *Metrics) Reload(source, result string) { m.reloads.WithLabelValues(result, source).Inc() }

// SetConfig publishes the running configuration's version and hash in config_info.
func (m *Metrics) SetConfig(version, hash string) {
	m.info.Reset()
	m.info.WithLabelValues(version, hash).Set(1)
}
