// Package proxy is the Trellis data-plane proxy: it accepts connections redirected to its outbound and inbound
// listeners, recovers their original destinations, detects their protocol and forwards them as HTTP/1, HTTP/2 or
// opaque TCP, according to the configuration snapshot current when each connection or request starts.
package proxy

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/proxy/authz"
	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/detect"
	"github.com/trellis-mesh/trellis/proxy/h1"
	"github.com/trellis-mesh/trellis/proxy/h2"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/mtls"
	"github.com/trellis-mesh/trellis/proxy/origdst"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
	"github.com/trellis-mesh/trellis/proxy/tcp"
)

// Default ports.
const (
	DefaultOutboundPort = 4140
	DefaultInboundPort  = 4143
	DefaultAdminPort    = 4191
)

// Options configure a Proxy.
type Options struct {
	// Store holds the configuration snapshot. Required; it must hold a snapshot before traffic arrives.
	Store *snapshot.Store
	// Metrics records traffic. Required.
	Metrics *metrics.Metrics
	// Log receives connection failures at debug level. Default slog.Default().
	Log *slog.Logger
	// OriginalDst recovers a redirected connection's destination. Default origdst.Get; tests inject their own.
	OriginalDst func(net.Conn) (netip.AddrPort, error)
	// OwnPorts are the proxy's own listener ports: a connection whose original destination is one of them on a local
	// address is a redirect loop and is refused. Default 4140, 4143, 4191.
	OwnPorts []uint16
	// Connector opens upstream connections. Default: plain TCP bounded by the current snapshot's connect timeout.
	// When it also implements mtls.TLSConnector (an *mtls.Mesh does), mesh TLS is on: HTTP requests to endpoints
	// with an identity go over multiplexed HTTP/2 connections it opens (ALPN "h2"), and the Connector itself wraps
	// TCP connections to such endpoints in mesh TLS (ALPN "trellis/1").
	Connector mtls.Connector
	// Terminator terminates mesh TLS on inbound connections whose ClientHello is a mesh client's. Default nil: all
	// TLS is forwarded untouched as opaque TCP.
	Terminator mtls.Terminator
	// Authorizer decides inbound connections and requests. Default authz.AllowAll.
	Authorizer authz.Authorizer
	// InboundHost is the application's address for inbound traffic. Default 127.0.0.1 (::1 for IPv6 destinations).
	InboundHost netip.Addr
	// MaxAuthorities bounds distinct inbound authority labels; further Host values share the label "other".
	// Default 256.
	MaxAuthorities int
}

// Proxy forwards the connections its listeners accept.
type Proxy struct {
	o        Options
	pool     *h1.Pool
	h1       *h1.Server
	h2       *h2.Server
	detectIn *metrics.Detector
	detectOu *metrics.Detector
	inTCP    *metrics.TCP
	unknown  *metrics.TCP
	unknownR *metrics.Route

	draining atomic.Bool
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	lns      []net.Listener

	authMu      sync.RWMutex
	authorities map[authorityKey]authorityClass
}

// authorityClass is the inbound metrics class of a Host value and client identity.
type authorityClass struct {
	m     *metrics.Route
	label string // the authority label: the Host value, or "other" beyond MaxAuthorities
}

// authorityKey identifies an inbound HTTP metrics class: the request's Host and the client's mesh identity.
type authorityKey struct{ host, identity string }

// New returns a Proxy.
func New(o Options) *Proxy {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.OriginalDst == nil {
		o.OriginalDst = origdst.Get
	}
	if o.OwnPorts == nil {
		o.OwnPorts = []uint16{DefaultOutboundPort, DefaultInboundPort, DefaultAdminPort}
	}
	if o.Authorizer == nil {
		o.Authorizer = authz.AllowAll{}
	}
	if !o.InboundHost.IsValid() {
		o.InboundHost = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	if o.MaxAuthorities == 0 {
		o.MaxAuthorities = 256
	}
	idle := 90 * time.Second
	if s := o.Store.Load(); s != nil {
		idle = s.HTTPIdleTimeout
	}
	if o.Connector == nil {
		o.Connector = snapshotConnector{o.Store}
	}
	p := &Proxy{
		o:           o,
		pool:        &h1.Pool{Connector: o.Connector, IdleTimeout: idle},
		detectIn:    o.Metrics.Detector(metrics.Inbound),
		detectOu:    o.Metrics.Detector(metrics.Outbound),
		inTCP:       o.Metrics.TCP(metrics.TCPLabels{Direction: metrics.Inbound, TLS: "false"}),
		unknown:     o.Metrics.TCP(metrics.TCPLabels{Direction: metrics.Outbound, TLS: "false"}),
		unknownR:    o.Metrics.Route(metrics.HTTPLabels{Direction: metrics.Outbound, TLS: "false"}),
		conns:       map[net.Conn]struct{}{},
		authorities: map[authorityKey]authorityClass{},
	}
	mesh, _ := o.Connector.(mtls.TLSConnector)
	p.h2 = h2.NewServer(h2.Options{Connector: o.Connector, Mesh: mesh, IdleTimeout: idle, Log: o.Log})
	p.h1 = &h1.Server{Pool: p.pool, IdleTimeout: idle, Log: o.Log}
	if mesh != nil {
		p.h1.Mesh = p.h2
	}
	return p
}

// snapshotConnector dials plain TCP with the connect timeout of the snapshot current at each dial.
type snapshotConnector struct{ store *snapshot.Store }

// Connect dials ep.
func (c snapshotConnector) Connect(ctx context.Context, ep *balance.Endpoint) (net.Conn, error) {
	timeout := time.Second
	if s := c.store.Load(); s != nil {
		timeout = s.ConnectTimeout
	}
	return mtls.Plain{Timeout: timeout}.Connect(ctx, ep)
}

// Direction selects a listener's role.
type Direction int

// Listener roles.
const (
	// Outbound serves connections the workload opens (redirected to 4140).
	Outbound Direction = iota
	// Inbound serves connections to the workload (redirected to 4143).
	Inbound
)

// Serve accepts connections on ln until ln is closed or Shutdown runs. It returns nil after Shutdown.
func (p *Proxy) Serve(ln net.Listener, d Direction) error {
	p.mu.Lock()
	if p.draining.Load() {
		p.mu.Unlock()
		ln.Close()
		return nil
	}
	p.lns = append(p.lns, ln)
	p.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if p.draining.Load() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Temporary failures such as EMFILE: back off and keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.o.Log.Warn("Accept failed", "error", err, "retryIn", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if !p.track(c, true) {
				c.Close()
				return
			}
			defer p.track(c, false)
			if d == Outbound {
				p.serveOutbound(c)
			} else {
				p.serveInbound(c)
			}
		}()
	}
}

func (p *Proxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		if p.draining.Load() {
			return false
		}
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	return true
}

// Draining reports whether Shutdown has started.
func (p *Proxy) Draining() bool { return p.draining.Load() }

// Shutdown stops accepting, lets in-flight requests finish (HTTP/1 connections close after their current response,
// HTTP/2 connections get GOAWAY), and when ctx ends closes whatever is still open. It returns when every connection
// has ended.
func (p *Proxy) Shutdown(ctx context.Context) {
	p.mu.Lock()
	p.draining.Store(true)
	for _, ln := range p.lns {
		ln.Close()
	}
	p.mu.Unlock()
	p.h1.Shutdown()
	h2done := make(chan struct{})
	go func() { p.h2.Shutdown(ctx); close(h2done) }()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		<-done
	}
	<-h2done
	p.pool.CloseIdle()
	p.h2.CloseIdle()
}

// ReapIdle closes upstream connections idle beyond the idle timeout; call it periodically.
func (p *Proxy) ReapIdle() { p.pool.Reap() }

// Active returns the number of open client connections.
func (p *Proxy) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// destination recovers c's original destination and refuses redirect loops.
func (p *Proxy) destination(c net.Conn) (netip.AddrPort, bool) {
	dst, err := p.o.OriginalDst(c)
	if err != nil {
		// Not redirected: the client dialled the proxy's port itself.
		if la, ok := c.LocalAddr().(*net.TCPAddr); ok {
			dst = la.AddrPort()
		}
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if p.isLoop(c, dst) {
		p.o.Log.Debug("Refused connection looping into the proxy", "dst", dst, "client", c.RemoteAddr())
		return dst, false
	}
	return dst, true
}

func (p *Proxy) isLoop(c net.Conn, dst netip.AddrPort) bool {
	if !dst.IsValid() {
		return true
	}
	own := false
	for _, port := range p.o.OwnPorts {
		own = own || dst.Port() == port
	}
	if !own {
		return false
	}
	a := dst.Addr()
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok && la.AddrPort().Addr().Unmap() == a {
		return true
	}
	return false
}

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

func getReader(c net.Conn) *bufio.Reader {
	br := readers.Get().(*bufio.Reader)
	br.Reset(c)
	return br
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readers.Put(br)
}

// countedConn counts bytes moved with the client in the connection's TCP metrics. The metrics class (TLS, peer
// identity, service) is often known only after detection and the TLS handshake: until setClass, bytes are counted
// aside, by the one goroutine that detects.
type countedConn struct {
	net.Conn
	m                         *metrics.TCP
	pendingRead, pendingWrite int
}

// setClass opens the connection in m's series, with the bytes moved so far. It is called once, before the
// connection is shared between goroutines.
func (c *countedConn) setClass(m *metrics.TCP) {
	if c.m != nil {
		return
	}
	c.m = m
	m.Open()
	if c.pendingRead > 0 {
		m.Read.Add(float64(c.pendingRead))
	}
	if c.pendingWrite > 0 {
		m.Write.Add(float64(c.pendingWrite))
	}
}

// closed counts the end of the connection, in def's series if no class was set.
func (c *countedConn) closed(def *metrics.TCP, err error) {
	c.setClass(def)
	c.m.Close(err)
}

// Read reads from the client and counts the bytes.
func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		if c.m == nil {
			c.pendingRead += n
		} else {
			c.m.Read.Add(float64(n))
		}
	}
	return n, err
}

// Write writes to the client and counts the bytes.
func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		if c.m == nil {
			c.pendingWrite += n
		} else {
			c.m.Write.Add(float64(n))
		}
	}
	return n, err
}

// CloseWrite half-closes the client connection (or closes it when it cannot half-close).
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

func (p *Proxy) serveOutbound(raw net.Conn) {
	dst, ok := p.destination(raw)
	if !ok {
		raw.Close()
		return
	}
	snap := p.o.Store.Load()
	svc := snap.Service(dst)
	c := &countedConn{Conn: raw}
	var closeErr error
	if svc == nil {
		// Unknown destination: plain TCP to where the client was going, without detection.
		c.setClass(p.unknown)
		defer func() { c.closed(p.unknown, closeErr) }()
		p.detectOu.Count("skipped")
		closeErr = p.forwardTCP(c, nil, balance.NewEndpoint(dst, "", ""), snap)
		return
	}
	defer func() { c.closed(svc.TCP, closeErr) }()
	br := getReader(c)
	pooled := true
	defer func() {
		if pooled {
			putReader(br)
		}
	}()
	proto := detect.Opaque
	if svc.Opaque || snap.OpaquePort(dst.Port()) {
		p.detectOu.Count("skipped")
	} else {
		var err error
		proto, err = detect.Peek(c, br, snap.DetectTimeout)
		p.detectOu.Count(proto.String())
		if proto == detect.Closed {
			closeErr = err
			c.Close()
			return
		}
	}
	r := &outboundRouter{p: p, dst: dst, fallback: balance.NewEndpoint(dst, "", "")}
	switch proto {
	case detect.HTTP1:
		c.setClass(svc.TCP)
		p.h1.ServeConn(c, br, r)
	case detect.HTTP2:
		c.setClass(svc.TCP)
		// net/http's frame reader may still be reading br after the connection closes: br is not reused.
		pooled = false
		p.h2.ServeConn(context.Background(), c, br, h2Outbound{r})
		c.Close()
	default:
		closeErr = p.forwardService(c, br, svc, snap)
	}
}

// forwardTCP connects to ep and relays bytes both ways; br, when set, holds bytes already read from c.
func (p *Proxy) forwardTCP(c net.Conn, br *bufio.Reader, ep *balance.Endpoint, snap *snapshot.Snapshot) error {
	up, err := p.o.Connector.Connect(context.Background(), ep)
	if err != nil {
		p.o.Log.Debug("TCP connect failed", "endpoint", ep.HostPort, "identity", ep.Identity, "error", err)
		c.Close()
		return err
	}
	o := tcp.Options{IdleTimeout: snap.TCPIdleTimeout}
	if br != nil {
		o.ClientReader = br
	}
	_, _, err = tcp.Forward(c, up, o)
	if errors.Is(err, tcp.ErrIdle) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// h2Request adapts an *http.Request for route matching.
type h2Request struct{ r *http.Request }

// Method returns the request method.
func (q h2Request) Method() string { return q.r.Method }

// Path returns the request path.
func (q h2Request) Path() string { return q.r.URL.Path }

// Header returns the first value of a header.
func (q h2Request) Header(lowerName string) (string, bool) {
	v := q.r.Header.Values(lowerName)
	if len(v) == 0 {
		return "", false
	}
	return v[0], true
}

// h2Inbound routes HTTP/2 streams of one inbound connection.
type h2Inbound struct{ *inboundRouter }

// Route implements h2.Router. On a mesh connection, a request carrying mtls.OrigProtoHeader was HTTP/1.x at the
// client and goes to the application as HTTP/1.1; the header is removed.
func (r h2Inbound) Route(req *http.Request) h2.Target {
	t := r.target(h2Request{req}, req.Host)
	ht := h2.Target{Endpoint: t.Endpoint, Metrics: t.Metrics, Timeout: t.Timeout, Status: t.Status, Reason: t.Reason}
	if r.identity != "" {
		if _, ok := req.Header[mtls.OrigProtoHeader]; ok {
			delete(req.Header, mtls.OrigProtoHeader)
			ht.HTTP1 = true
		}
	}
	return ht
}

func (p *Proxy) serveInbound(raw net.Conn) {
	dst, ok := p.destination(raw)
	if !ok {
		raw.Close()
		return
	}
	snap := p.o.Store.Load()
	c := &countedConn{Conn: raw}
	var closeErr error
	defer func() { c.closed(p.inTCP, closeErr) }()
	var client netip.AddrPort
	if ta, ok := raw.RemoteAddr().(*net.TCPAddr); ok {
		client = ta.AddrPort()
	}
	host := p.o.InboundHost
	if dst.Addr().Is6() && host == netip.AddrFrom4([4]byte{127, 0, 0, 1}) {
		host = netip.IPv6Loopback()
	}
	app := balance.NewEndpoint(netip.AddrPortFrom(host, dst.Port()), "", "")
	port := snap.Inbound(dst.Port())
	br := getReader(c)
	pooled := true
	defer func() {
		if pooled {
			putReader(br)
		}
	}()
	proto := detect.Opaque
	switch opaque := (port != nil && port.Opaque) || snap.OpaquePort(dst.Port()); {
	case opaque && p.o.Terminator == nil:
		p.detectIn.Count("skipped")
	case opaque:
		// No detection, but a meshed client's proxy opens with its ClientHello, which must be terminated: wait for the
		// first byte (a server-speaks-first protocol from an unmeshed client waits the detect timeout).
		p.detectIn.Count("skipped")
		var err error
		if proto, err = peekTLS(c, br, snap.DetectTimeout); proto == detect.Closed {
			closeErr = err
			c.Close()
			return
		}
	default:
		var err error
		proto, err = detect.Peek(c, br, snap.DetectTimeout)
		p.detectIn.Count(proto.String())
		if proto == detect.Closed {
			closeErr = err
			c.Close()
			return
		}
	}
	r := &inboundRouter{p: p, app: app, port: dst.Port(), client: client}
	if proto == detect.TLS && p.o.Terminator != nil && meshHello(c, br, snap.DetectTimeout) {
		// net/http or the TLS connection may still read br after the connection closes: br is not reused.
		pooled = false
		closeErr = p.serveMesh(c, br, r, snap)
		return
	}
	c.setClass(p.inTCP)
	switch proto {
	case detect.HTTP1:
		p.h1.ServeConn(c, br, r)
	case detect.HTTP2:
		pooled = false // as outbound
		p.h2.ServeConn(context.Background(), c, br, h2Inbound{r})
		c.Close()
	default:
		if !r.authorizeTCP() {
			c.Close()
			return
		}
		closeErr = p.forwardTCP(c, br, app, snap)
	}
}

// peekTLS waits up to timeout for a client's first byte and reports detect.TLS when it may start a ClientHello,
// detect.Opaque for anything else or nothing, detect.Closed when the client went away.
func peekTLS(c net.Conn, br *bufio.Reader, timeout time.Duration) (detect.Protocol, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return detect.Closed, err
	}
	defer c.SetReadDeadline(time.Time{}) //nolint:errcheck // a failure shows up on the next read
	b, err := br.Peek(1)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return detect.Opaque, nil
	case err != nil:
		return detect.Closed, err
	case b[0] == 0x16:
		return detect.TLS, nil
	}
	return detect.Opaque, nil
}

// meshHello reads the client's first TLS record into br (waiting at most timeout) and reports whether it is a mesh
// client's ClientHello.
func meshHello(c net.Conn, br *bufio.Reader, timeout time.Duration) bool {
	deadline := false
	defer func() {
		if deadline {
			c.SetReadDeadline(time.Time{}) //nolint:errcheck // a failure shows up on the next read
		}
	}()
	for {
		b, _ := br.Peek(br.Buffered())
		mesh, more, need := mtls.IsMeshHello(b)
		if !more {
			return mesh
		}
		if need > br.Size() {
			return false
		}
		if !deadline {
			deadline = true
			if c.SetReadDeadline(time.Now().Add(timeout)) != nil {
				return false
			}
		}
		if _, err := br.Peek(need); err != nil {
			return false
		}
	}
}

// prefixConn reads bytes already buffered by detection before the connection's own.
type prefixConn struct {
	net.Conn
	r *bufio.Reader
}

// Read reads the buffered bytes, then the connection.
func (c *prefixConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// serveMesh terminates a meshed client's TLS, then serves HTTP/2 streams (ALPN "h2") or relays one opaque stream to
// the application (ALPN "trellis/1"), with the client's identity for authorization and metrics.
func (p *Proxy) serveMesh(c *countedConn, br *bufio.Reader, r *inboundRouter, snap *snapshot.Snapshot) error {
	tc, peer, err := p.o.Terminator.Terminate(context.Background(), &prefixConn{Conn: c, r: br})
	if err != nil {
		if p.o.Log.Enabled(context.Background(), slog.LevelDebug) {
			p.o.Log.Debug("Mesh TLS handshake failed", "client", r.client, "reason", mtls.Reason(err), "error", err)
		}
		c.Close()
		return err
	}
	defer tc.Close()
	r.identity = peer.Identity
	c.setClass(p.o.Metrics.TCP(metrics.TCPLabels{Direction: metrics.Inbound, TLS: "true", ClientID: peer.Identity}))
	if peer.Protocol == mtls.ProtocolHTTP2 {
		p.h2.ServeConn(context.Background(), tc, nil, h2Inbound{r})
		return nil
	}
	if !r.authorizeTCP() {
		return nil
	}
	return p.forwardTCP(tc, nil, r.app, snap)
}

// inboundRouter routes the requests of one inbound connection to the application.
type inboundRouter struct {
	p        *Proxy
	app      *balance.Endpoint
	port     uint16
	client   netip.AddrPort
	identity string // the client's verified SPIFFE ID; empty without mesh TLS
}

// authorize asks the Authorizer about the client under the port's current settings (req is nil for a connection
// relayed as bytes) and counts the decision.
func (r *inboundRouter) authorize(s *snapshot.Snapshot, req authz.HTTPRequest, authority string) authz.Decision {
	ar := authz.Request{Port: r.port, Client: r.client, Identity: r.identity, HTTP: req}
	if s != nil {
		ar.Policy, ar.DefaultPolicy = s.Authz(r.port), s.DefaultPolicy
	}
	d := r.p.o.Authorizer.Authorize(ar)
	tls := "false"
	if r.identity != "" {
		tls = "true"
	}
	r.p.o.Metrics.Authz(metrics.AuthzLabels{HTTP: req != nil, Allow: d.Allow, Port: r.port, Rule: d.Authorization,
		TLS: tls, ClientID: r.identity, Route: d.Route, Authority: authority})
	if !d.Allow && r.p.o.Log.Enabled(context.Background(), slog.LevelDebug) {
		r.p.o.Log.Debug("Inbound denied", "port", r.port, "client", r.client, "identity", r.identity,
			"rule", d.Authorization, "route", d.Route, "reason", d.Reason, "http", req != nil)
	}
	return d
}

// authorizeTCP decides a connection relayed as opaque bytes.
func (r *inboundRouter) authorizeTCP() bool {
	return r.authorize(r.p.o.Store.Load(), nil, "").Allow
}

func (r *inboundRouter) target(req authz.HTTPRequest, host string) (t h1.Target) {
	t.Endpoint = r.app
	class := r.p.authority(host, r.identity)
	t.Metrics = class.m
	s := r.p.o.Store.Load()
	if d := r.authorize(s, req, class.label); !d.Allow {
		t.Status, t.Reason = 403, d.Reason
	}
	if s != nil {
		t.Timeout = s.RequestTimeout
	}
	return t
}

// Route implements h1.Router.
func (r *inboundRouter) Route(req *h1.Request) h1.Target { return r.target(req, req.Host()) }

// authority returns the inbound metrics class of a Host value and client identity, from a bounded cache.
func (p *Proxy) authority(host, identity string) authorityClass {
	k := authorityKey{host, identity}
	p.authMu.RLock()
	c, ok := p.authorities[k]
	p.authMu.RUnlock()
	if ok {
		return c
	}
	p.authMu.Lock()
	defer p.authMu.Unlock()
	if c, ok := p.authorities[k]; ok {
		return c
	}
	k.host = strings.Clone(host) // host may alias a request buffer
	c.label = k.host
	if len(p.authorities) >= p.o.MaxAuthorities {
		c.label = "other"
	}
	l := metrics.HTTPLabels{Direction: metrics.Inbound, Authority: c.label, TLS: "false"}
	if identity != "" {
		l.TLS, l.ClientID = "true", identity
	}
	c.m = p.o.Metrics.Route(l)
	if c.label != "other" {
		p.authorities[k] = c
	}
	return c
}
