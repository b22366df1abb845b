// Package h2 forwards HTTP/2 with prior knowledge (h2c, as gRPC speaks it) stream by stream to upstream endpoints over
// multiplexed HTTP/2 connections, on net/http's HTTP/2 server and transport. Bodies stream in both directions through
// a fixed buffer under HTTP/2 flow control; trailers (gRPC status) and resets pass through; Shutdown sends GOAWAY.
//
// Streams to endpoints with an identity go over mesh TLS (ALPN "h2") when a mesh connector is configured, on a
// transport whose connection pool is keyed by the endpoint's address and identity; HTTP/1.x requests of the proxy's
// HTTP/1 side use the same connections (RoundTripMesh). Streams whose router says so (requests that were HTTP/1.x at
// the client, see mtls.OrigProtoHeader) reach their endpoint as HTTP/1.1.
package h2

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/circuit"
	"github.com/trellis-mesh/trellis/proxy/headers"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/mtls"
	"github.com/trellis-mesh/trellis/proxy/retry"
)

// Target says where one stream goes.
type Target struct {
	// Endpoint receives the stream (its first attempt) when Status is 0.
	Endpoint *balance.Endpoint
	// Done, when set, is called once with the outcome of the attempt sent to Endpoint: Err for no response, Failed
	// for a 5xx or a gRPC server error (for a gRPC response whose status is in its trailers, after the body),
	// Canceled when the client went away, Latency the time to the response headers.
	Done func(balance.DoneInfo)
	// Timeout bounds the time from the request to its final response headers, retries included; 0 means none. On
	// expiry the client gets 504 (gRPC: DEADLINE_EXCEEDED) with trellis-proxy-error
	// "request timed out after <Timeout>".
	Timeout time.Duration
	// Retry decides which failed attempts are retried, how often and after which backoff, within its budget; it also
	// sets the per-try timeout and how much of a request body is kept for replay. Nil: one attempt.
	Retry *retry.Plan
	// Picker chooses the endpoint of each retry (the backend's Picker). Nil: no retry.
	Picker balance.Picker
	// RequestHeaders and ResponseHeaders change the forwarded request's and the relayed response's header fields.
	// Nil changes nothing.
	RequestHeaders, ResponseHeaders *headers.Modifier
	// Breaker bounds the service's requests in flight (a stream may wait for a slot until Timeout); a stream it
	// refuses gets 503 (gRPC: UNAVAILABLE). Nil: unlimited.
	Breaker *circuit.Breaker
	// Metrics records the stream; nil records nothing.
	Metrics *metrics.Route
	// Status, when non-zero, answers locally with this status instead of forwarding (gRPC requests get the matching
	// grpc-status instead).
	Status int
	// Reason explains a local answer in the trellis-proxy-error header, or for 403 in trellis-deny-reason.
	Reason string
	// HTTP1 sends the stream to Endpoint as an HTTP/1.1 request instead of HTTP/2.
	HTTP1 bool
}

// Router decides where each stream goes. Route must not block.
type Router interface {
	Route(r *http.Request) Target
}

// Server serves HTTP/2 client connections handed to it one by one.
type Server struct {
	log       *slog.Logger
	srv       *http.Server
	ln        *connListener
	transport *http.Transport // h2c
	http1     *http.Transport // HTTP/1.1, for Target.HTTP1
	mesh      *http.Transport // h2 over mesh TLS; nil when mesh TLS is off
	bufs      sync.Pool
	served    chan struct{}

	hostsMu sync.RWMutex
	hosts   map[meshDest]string
}

// Options configure NewServer.
type Options struct {
	// Connector opens upstream connections. Required.
	Connector mtls.Connector
	// Mesh opens mesh TLS connections for streams to endpoints with an identity. Default nil: identities are ignored
	// and such endpoints get h2c like the others (mesh TLS disabled).
	Mesh mtls.TLSConnector
	// IdleTimeout closes client and upstream connections without streams for this long. Default 90s.
	IdleTimeout time.Duration
	// MaxConcurrentStreams is advertised to clients. Default 1000.
	MaxConcurrentStreams int
	// Log receives stream failures at debug level. Default slog.Default().
	Log *slog.Logger
}

type routerKey struct{}

// NewServer returns a Server that forwards over its own HTTP/2 transport. It runs until Shutdown.
func NewServer(o Options) *Server {
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 90 * time.Second
	}
	if o.MaxConcurrentStreams == 0 {
		o.MaxConcurrentStreams = 1000
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	s := &Server{log: o.Log, ln: newConnListener(), served: make(chan struct{})}
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true) // prior knowledge only: detection already saw the preface
	s.srv = &http.Server{
		Handler:     &handler{s: s},
		Protocols:   h2c,
		IdleTimeout: o.IdleTimeout,
		// Advertise the protocol's default maximum frame size (RFC 9113 §6.5.2) rather than Go's 1 MiB, so frames
		// larger than 16 KiB are refused with FRAME_SIZE_ERROR as peers expect.
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: o.MaxConcurrentStreams, MaxReadFrameSize: 16 << 10},
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*clientConn); ok {
				return context.WithValue(ctx, routerKey{}, pc.router)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(o.Log.Handler(), slog.LevelDebug),
	}
	go func() {
		defer close(s.served)
		s.srv.Serve(s.ln) //nolint:errcheck // ends with http.ErrServerClosed at Shutdown
	}()
	connector := o.Connector
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, err
		}
		return connector.Connect(ctx, &balance.Endpoint{Addr: ap, HostPort: addr})
	}
	pings := &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second}
	s.transport = &http.Transport{
		Protocols:   h2c,
		DialContext: dial,
		// A proxy relays bodies as they are: no transparent compression.
		DisableCompression: true,
		IdleConnTimeout:    o.IdleTimeout,
		HTTP2:              pings,
	}
	h1 := new(http.Protocols)
	h1.SetHTTP1(true)
	s.http1 = &http.Transport{
		Protocols:           h1,
		DialContext:         dial,
		DisableCompression:  true,
		IdleConnTimeout:     o.IdleTimeout,
		MaxIdleConnsPerHost: 128,
	}
	if o.Mesh != nil {
		tlsH2 := new(http.Protocols)
		tlsH2.SetHTTP2(true)
		mesh := o.Mesh
		s.mesh = &http.Transport{
			Protocols:         tlsH2,
			ForceAttemptHTTP2: true,
			DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				ep, err := parseMeshHost(addr)
				if err != nil {
					return nil, err
				}
				return mesh.ConnectTLS(ctx, ep, mtls.ProtocolHTTP2)
			},
			DisableCompression: true,
			IdleConnTimeout:    o.IdleTimeout,
			HTTP2:              pings,
			// For HTTP/2 this bounds dials in progress, not connections: requests arriving together wait for one
			// handshake instead of each making its own (net/http would keep one connection and discard the rest).
			MaxConnsPerHost: 1,
		}
		s.hosts = map[meshDest]string{}
	}
	s.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	return s
}

// meshDest is where a mesh connection goes: the pool key of the mesh transport.
type meshDest struct {
	addr     netip.AddrPort
	identity string
}

// maxMeshHosts bounds the cache of encoded mesh hosts; past it the cache starts over (entries are recomputed).
const maxMeshHosts = 4096

// meshHost returns the URL host that stands for ep on the mesh transport: its identity and address encoded into a
// host name, so that net/http's pool keeps connections per address and identity, and the dialer can recover both.
func (s *Server) meshHost(ep *balance.Endpoint) string {
	k := meshDest{ep.Addr, ep.Identity}
	s.hostsMu.RLock()
	h, ok := s.hosts[k]
	s.hostsMu.RUnlock()
	if ok {
		return h
	}
	h = encodeMeshHost(ep.Addr, ep.Identity)
	s.hostsMu.Lock()
	if len(s.hosts) >= maxMeshHosts {
		clear(s.hosts)
	}
	s.hosts[k] = h
	s.hostsMu.Unlock()
	return h
}

// encodeMeshHost returns "<hex identity>.<hex IP>.mesh:<port>".
func encodeMeshHost(addr netip.AddrPort, identity string) string {
	ip := addr.Addr().Unmap().AsSlice()
	return hex.EncodeToString([]byte(identity)) + "." + hex.EncodeToString(ip) + ".mesh:" +
		strconv.Itoa(int(addr.Port()))
}

// parseMeshHost reverses encodeMeshHost.
func parseMeshHost(hostport string) (*balance.Endpoint, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	idHex, rest, ok1 := strings.Cut(host, ".")
	ipHex, suffix, ok2 := strings.Cut(rest, ".")
	id, err1 := hex.DecodeString(idHex)
	ipb, err2 := hex.DecodeString(ipHex)
	p, err3 := strconv.ParseUint(port, 10, 16)
	ip, ok3 := netip.AddrFromSlice(ipb)
	if !ok1 || !ok2 || suffix != "mesh" || err1 != nil || err2 != nil || err3 != nil || !ok3 {
		return nil, fmt.Errorf("h2: %q is not a mesh host", hostport)
	}
	return balance.NewEndpoint(netip.AddrPortFrom(ip, uint16(p)), string(id), ""), nil
}

// RoundTripMesh sends req to the meshed endpoint ep over the mesh's HTTP/2 connection for ep's address and identity
// (dialled on first use; more connections only when the server's stream limit is reached). It sets req.URL's scheme
// and host; the request's authority is req.Host.
func (s *Server) RoundTripMesh(req *http.Request, ep *balance.Endpoint) (*http.Response, error) {
	if s.mesh == nil {
		return nil, errors.New("h2: mesh TLS is disabled")
	}
	req.URL.Scheme, req.URL.Host = "https", s.meshHost(ep)
	return s.mesh.RoundTrip(req)
}

// clientConn is a client connection whose first bytes were read ahead into a bufio.Reader by detection. Close
// reports the end of the connection to ServeConn.
type clientConn struct {
	net.Conn
	r      *bufio.Reader
	router Router
	once   sync.Once
	done   chan struct{}
}

// Read reads the peeked bytes first, then the connection.
func (c *clientConn) Read(b []byte) (int, error) {
	if c.r == nil {
		return c.Conn.Read(b)
	}
	return c.r.Read(b)
}

// Close closes the connection and wakes ServeConn.
func (c *clientConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// connListener hands connections accepted elsewhere to http.Server.Serve.
type connListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newConnListener() *connListener {
	return &connListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

// Accept returns the next connection given to ServeConn.
func (l *connListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops Accept.
func (l *connListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr returns a placeholder address: connections come from the proxy's own listeners.
func (l *connListener) Addr() net.Addr { return &net.TCPAddr{} }

// ServeConn serves streams on c until the client or Shutdown ends the connection. br, when not nil, reads c and holds
// bytes already peeked. ServeConn returns when the connection is closed; br must not be reused before then.
func (s *Server) ServeConn(ctx context.Context, c net.Conn, br *bufio.Reader, router Router) {
	cc := &clientConn{Conn: c, r: br, router: router, done: make(chan struct{})}
	select {
	case s.ln.ch <- cc:
	case <-s.ln.closed:
		c.Close()
		return
	case <-ctx.Done():
		c.Close()
		return
	}
	<-cc.done
}

// Shutdown sends GOAWAY on every connection and waits, until ctx ends, for their streams to finish; connections still
// open then are closed.
func (s *Server) Shutdown(ctx context.Context) {
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
	<-s.served
}

// CloseIdle closes idle upstream connections.
func (s *Server) CloseIdle() {
	s.transport.CloseIdleConnections()
	s.http1.CloseIdleConnections()
	if s.mesh != nil {
		s.mesh.CloseIdleConnections()
	}
}

type handler struct {
	s *Server
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// ServeHTTP forwards one stream, retrying failed attempts as the target's retry plan allows.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	router, ok := r.Context().Value(routerKey{}).(Router)
	if !ok {
		http.Error(w, "no router", http.StatusInternalServerError)
		return
	}
	t := router.Route(r)
	if t.Metrics != nil {
		t.Metrics.Request()
	}
	if t.Status != 0 {
		h.local(w, r, t, start, t.Status, t.Reason)
		return
	}
	var deadline time.Time
	if t.Timeout > 0 {
		deadline = start.Add(t.Timeout)
	}
	if t.Breaker != nil {
		if err := t.Breaker.Acquire(deadline, r.Context().Done()); err != nil {
			if t.Done != nil {
				t.Done(balance.DoneInfo{Canceled: true})
			}
			h.local(w, r, t, start, 503, err.Error())
			return
		}
		defer t.Breaker.Release()
	}
	plan := t.Retry
	if plan != nil {
		plan.Budget.Deposit()
	}
	t.RequestHeaders.Apply(r.Header)
	var body *replayBody
	if plan != nil && t.Picker != nil && r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		body = &replayBody{src: r.Body, limit: plan.MaxBodyBytes}
	}
	ep, done := t.Endpoint, t.Done
	for n := 0; ; n++ {
		a := h.try(r, t, ep, body, deadline)
		now := time.Now()
		again, delay := false, time.Duration(0)
		if plan != nil && t.Picker != nil && !a.canceled {
			left := retry.NoDeadline
			if !deadline.IsZero() {
				left = deadline.Sub(now)
			}
			replayable := r.ContentLength == 0 || (body != nil && body.replayable())
			delay, again = plan.Decide(r.Method, n, a.outcome, replayable, left)
		}
		info := a.doneInfo(now.Sub(a.start))
		if !again {
			if done != nil && !a.grpcTrailers {
				done(info)
				done = nil
			}
			h.finish(w, r, t, a, start, done)
			return
		}
		a.abandon()
		if delay > 0 {
			timer := time.NewTimer(delay)
			select {
			case <-timer.C:
			case <-r.Context().Done():
				timer.Stop()
				if done != nil {
					done(info)
				}
				if t.Metrics != nil {
					t.Metrics.Response(a.answer(), true, time.Since(start))
				}
				return
			}
		}
		// The failed attempt is reported after the retry's pick: the endpoint still counts it as in flight, so the
		// pick leans away from it.
		next, nextDone, err := balance.PickExcept(t.Picker, ep.Addr, retryPicks)
		if done != nil {
			done(info)
		}
		if err != nil {
			nextDone(balance.DoneInfo{Err: err})
			h.local(w, r, t, start, 503, "no endpoints")
			return
		}
		ep, done = next, nextDone
	}
}

// attempt is one try of a stream.
type attempt struct {
	start        time.Time
	latency      time.Duration // to the response headers
	resp         *http.Response
	cancel       context.CancelFunc
	body         *attemptBody
	err          error  // no response: why
	code         int    // no response: the status the client gets
	reason       string // no response: the trellis-proxy-error text
	outcome      retry.Outcome
	canceled     bool // the client went away
	grpcTrailers bool // a gRPC response whose status comes in its trailers
}

// answer returns the status the client gets (or would have got) for the attempt.
func (a *attempt) answer() int {
	if a.resp != nil {
		return a.resp.StatusCode
	}
	return a.code
}

// doneInfo reports the attempt to the balancer.
func (a *attempt) doneInfo(latency time.Duration) balance.DoneInfo {
	switch {
	case a.canceled:
		return balance.DoneInfo{Canceled: true, Latency: latency}
	case a.err != nil:
		return balance.DoneInfo{Err: a.err, Latency: latency}
	}
	return balance.DoneInfo{Failed: a.outcome.Failure(), Latency: latency}
}

// abandon ends an attempt that is retried.
func (a *attempt) abandon() {
	if a.resp != nil {
		a.resp.Body.Close()
	}
	if a.body != nil {
		a.body.Close()
	}
	a.cancel()
}

// try sends one attempt of r to ep and waits for its response headers until the request's deadline or the per-try
// timeout, whichever comes first.
func (h *handler) try(r *http.Request, t Target, ep *balance.Endpoint, body *replayBody, deadline time.Time) *attempt {
	a := &attempt{start: time.Now()}
	limit, perTry := deadline, false
	if t.Retry != nil && t.Retry.PerTryTimeout > 0 {
		if d := a.start.Add(t.Retry.PerTryTimeout); limit.IsZero() || d.Before(limit) {
			limit, perTry = d, true
		}
	}
	ctx, cancel := context.WithCancel(r.Context())
	a.cancel = cancel
	var timer *time.Timer
	var fired atomic.Bool
	if !limit.IsZero() {
		timer = time.AfterFunc(time.Until(limit), func() { fired.Store(true); cancel() })
	}
	out := r.WithContext(ctx)
	out.URL = &url.URL{Scheme: "http", Host: ep.HostPort, Path: r.URL.Path, RawPath: r.URL.RawPath,
		RawQuery: r.URL.RawQuery}
	out.RequestURI = ""
	out.Close = false
	switch {
	case r.ContentLength == 0:
		out.Body = nil
	case body != nil:
		a.body = body.attempt()
		out.Body = a.body
	}
	rt := h.s.transport
	mesh := ep.Identity != "" && h.s.mesh != nil
	switch {
	case mesh:
		// The client spoke HTTP/2: the header must not make the server's proxy think otherwise.
		delete(out.Header, mtls.OrigProtoHeader)
		rt, out.URL.Scheme, out.URL.Host = h.s.mesh, "https", h.s.meshHost(ep)
	case t.HTTP1:
		rt = h.s.http1
	}
	resp, err := rt.RoundTrip(out)
	if timer != nil && !timer.Stop() && err == nil {
		// The deadline passed as the headers arrived: the stream is canceled already.
		resp.Body.Close()
		resp, err = nil, context.DeadlineExceeded
	}
	if err == nil {
		a.resp, a.latency = resp, time.Since(a.start)
		a.outcome.Status = resp.StatusCode
		if st := resp.Header.Get("Grpc-Status"); st != "" {
			a.outcome.GRPCStatus, _ = strconv.Atoi(st)
		} else if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/grpc") {
			a.grpcTrailers = true
		}
		return a
	}
	cancel()
	if a.body != nil {
		a.body.Close()
	}
	a.err = err
	if h.s.log.Enabled(r.Context(), slog.LevelDebug) {
		h.s.log.Debug("Stream failed", "endpoint", ep.HostPort, "identity", ep.Identity, "error", err)
	}
	switch {
	case r.Context().Err() != nil:
		a.canceled, a.code, a.reason = true, 502, "client went away"
	case fired.Load():
		a.code, a.outcome.Timeout = 504, true
		if perTry {
			a.reason = "request attempt timed out after " + t.Retry.PerTryTimeout.String() + " (per-try timeout)"
		} else {
			a.reason = "request timed out after " + t.Timeout.String()
		}
	default:
		a.code, a.reason = UpstreamFailure(err, mesh)
		a.outcome.ConnectFailure, a.outcome.RefusedStream = ConnectFailure(err), RefusedStream(err)
		a.outcome.Reset = !a.outcome.ConnectFailure && !a.outcome.RefusedStream
	}
	return a
}

// finish answers the client with the final attempt: the relayed response, or the proxy's error. done, when not nil,
// is called after the response body (a gRPC response whose status is in its trailers).
func (h *handler) finish(w http.ResponseWriter, r *http.Request, t Target, a *attempt, start time.Time,
	done func(balance.DoneInfo)) {
	defer a.cancel()
	if a.err != nil {
		if !a.canceled {
			h.local(w, r, Target{}, start, a.code, a.reason)
		}
		if t.Metrics != nil {
			t.Metrics.Response(a.code, true, time.Since(start))
		}
		return
	}
	resp := a.resp
	defer resp.Body.Close()
	latency := time.Since(start)
	if t.HTTP1 {
		RemoveHopByHop(resp.Header)
	}
	hdr := w.Header()
	for k, v := range resp.Header {
		hdr[k] = v
	}
	t.ResponseHeaders.Apply(hdr)
	// Announce the trailers the upstream declared (net/http moves them from the Trailer field to resp.Trailer's
	// keys): the response then never gets a computed Content-Length, and the next hop knows trailers follow.
	for k := range resp.Trailer {
		hdr.Add("Trailer", k)
	}
	w.WriteHeader(resp.StatusCode)
	err := h.copyBody(w, resp.Body)
	for k, v := range resp.Trailer {
		hdr[http.TrailerPrefix+k] = v
	}
	if t.Metrics != nil {
		t.Metrics.Response(resp.StatusCode, failed(resp), latency)
	}
	if done != nil {
		d := balance.DoneInfo{Latency: a.latency}
		code, _ := strconv.Atoi(resp.Trailer.Get("Grpc-Status"))
		switch {
		case r.Context().Err() != nil:
			d.Canceled = true
		case err != nil && !errors.Is(err, io.EOF):
			d.Err = err
		default:
			d.Failed = retry.GRPCFailure(code)
		}
		done(d)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		// The upstream stream broke (reset, GOAWAY without retry, timeout): reset the client stream too rather than
		// ending it as if the body were complete.
		panic(http.ErrAbortHandler)
	}
}

// failed classifies a finished response: 5xx, or a gRPC status other than OK.
func failed(resp *http.Response) bool {
	if resp.StatusCode >= 500 {
		return true
	}
	st := resp.Trailer.Get("Grpc-Status")
	if st == "" {
		st = resp.Header.Get("Grpc-Status")
	}
	return st != "" && st != "0"
}

// copyBody streams body to w, flushing after every read so streaming RPCs see each message at once. A read that ends
// the body is not flushed: the end of the stream follows in the same write.
func (h *handler) copyBody(w http.ResponseWriter, body io.Reader) error {
	bp := h.s.bufs.Get().(*[]byte)
	defer h.s.bufs.Put(bp)
	buf := *bp
	fl, _ := w.(http.Flusher)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if fl != nil && err == nil {
				fl.Flush()
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// grpcCodes maps proxy statuses to gRPC codes (UNAVAILABLE, PERMISSION_DENIED, DEADLINE_EXCEEDED, …).
var grpcCodes = map[int]string{403: "7", 404: "12", 502: "14", 503: "14", 504: "4"}

// UpstreamFailure maps an upstream failure to the status and reason the client gets: 504 for a timeout, 502 with
// the mesh TLS failure reason for a failed mesh handshake (mesh says the request went over mesh TLS), else 502.
func UpstreamFailure(err error, mesh bool) (code int, reason string) {
	var he *mtls.HandshakeError
	switch {
	case errors.As(err, &he):
		return 502, meshFailures[mtls.Reason(he.Err)]
	case mesh && (mtls.Reason(err) == mtls.ReasonPeerRefused || strings.Contains(err.Error(), "could not be established")):
		// TLS 1.3: the client learns that the server refused its certificate only after its own handshake, from
		// the alert that comes instead of the server's first HTTP/2 frames.
		return 502, meshFailures[mtls.ReasonPeerRefused]
	case errors.Is(err, context.DeadlineExceeded):
		return 504, "response timeout"
	}
	return 502, "upstream failed"
}

// ConnectFailure reports whether a round trip failed because no connection to the endpoint could be established
// (dial error, mesh TLS handshake failure): the request was not sent.
func ConnectFailure(err error) bool {
	var he *mtls.HandshakeError
	if errors.As(err, &he) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// RefusedStream reports whether the server refused the stream without processing it: RST_STREAM with
// REFUSED_STREAM, or a graceful GOAWAY before the stream was sent (net/http reports both only through their text).
func RefusedStream(err error) bool {
	s := err.Error()
	return strings.Contains(s, "REFUSED_STREAM") || strings.Contains(s, "graceful shutdown GOAWAY")
}

var meshFailures = map[string]string{}

func init() {
	for _, r := range []string{mtls.ReasonIdentityMismatch, mtls.ReasonUntrusted, mtls.ReasonNoCertificate,
		mtls.ReasonProtocol, mtls.ReasonTimeout, mtls.ReasonPeerRefused, mtls.ReasonOther} {
		meshFailures[r] = "mesh tls handshake failed: " + r
	}
}

// RemoveHopByHop deletes the connection-specific fields of an HTTP/1 message (RFC 9110 §7.6.1), which HTTP/2 must not
// carry: Connection and the fields it names, Keep-Alive, Proxy-Connection, Transfer-Encoding and Upgrade.
func RemoveHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, f := range strings.Split(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"} {
		delete(h, k)
	}
}

// local answers without forwarding; gRPC clients get a trailers-only response carrying the matching grpc-status.
// A 403 carries trellis-deny-reason with the reason.
func (h *handler) local(w http.ResponseWriter, r *http.Request, t Target, start time.Time, code int, reason string) {
	if t.Metrics != nil {
		t.Metrics.Response(code, code >= 500, time.Since(start))
	}
	hdr := w.Header()
	if code == 403 {
		hdr.Set("Trellis-Proxy-Error", "unauthorized")
		hdr.Set("Trellis-Deny-Reason", reason)
	} else {
		hdr.Set("Trellis-Proxy-Error", reason)
	}
	if isGRPC(r) {
		gc, ok := grpcCodes[code]
		if !ok {
			gc = "13"
		}
		hdr.Set("Content-Type", "application/grpc")
		hdr.Set("Grpc-Status", gc)
		hdr.Set("Grpc-Message", reason)
		w.WriteHeader(200)
	} else {
		w.WriteHeader(code)
	}
}
