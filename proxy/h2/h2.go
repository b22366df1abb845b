// Package h2 forwards HTTP/2 with prior knowledge (h2c, as gRPC speaks it) stream by stream to upstream endpoints over
// multiplexed HTTP/2 connections, on net/http's HTTP/2 server and transport. Bodies stream in both directions through a fixed buffer under HTTP/2 flow control;
// trailers (gRPC status) and resets pass through; Shutdown sends GOAWAY.
package h2

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/mtls"
)

// Target says where one stream goes.
type Target struct {
	// Endpoint receives the stream when Status is 0.
	Endpoint *balance.Endpoint
	// Done, when set, is called once with the outcome.
	Done func(balance.DoneInfo)
	// Timeout bounds the time to the response headers; 0 means none.
	Timeout time.Duration
	// Metrics records the stream; nil records nothing.
	Metrics *metrics.Route
	// Status, when non-zero, answers locally with this status instead of forwarding (gRPC requests get the matching
	// grpc-status instead).
	Status int
	// Reason explains a local answer in the trellis-proxy-error header.
	Reason string
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
	transport *http.Transport
	bufs      sync.Pool
	served    chan struct{}
}

// Options configure NewServer.
type Options struct {
	// Connector opens upstream connections. Required.
	Connector mtls.Connector
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
	s.transport = &http.Transport{
		Protocols: h2c,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			return connector.Connect(ctx, &balance.Endpoint{Addr: ap, HostPort: addr})
		},
		// A proxy relays bodies as they are: no transparent compression.
		DisableCompression: true,
		IdleConnTimeout:    o.IdleTimeout,
		HTTP2:              &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
	}
	s.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	return s
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
func (c *clientConn) Read(b []byte) (int, error) { return c.r.Read(b) }

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

// ServeConn serves streams on c until the client or Shutdown ends the connection. br holds bytes already peeked.
// ServeConn returns when the connection is closed; br must not be reused before then.
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
func (s *Server) CloseIdle() { s.transport.CloseIdleConnections() }

type handler struct {
	s *Server
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// ServeHTTP forwards one stream.
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
	ctx := r.Context()
	if t.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t.Timeout)
		defer cancel()
	}
	out := r.WithContext(ctx)
	out.URL = &url.URL{Scheme: "http", Host: t.Endpoint.HostPort, Path: r.URL.Path, RawPath: r.URL.RawPath,
		RawQuery: r.URL.RawQuery}
	out.RequestURI = ""
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil
	}
	resp, err := h.s.transport.RoundTrip(out)
	if err != nil {
		code, reason := 502, "upstream failed"
		if errors.Is(err, context.DeadlineExceeded) {
			code, reason = 504, "response timeout"
		}
		if t.Done != nil {
			t.Done(balance.DoneInfo{Err: err, Latency: time.Since(start)})
		}
		if r.Context().Err() != nil {
			// The client went away; there is nobody to answer.
			if t.Metrics != nil {
				t.Metrics.Response(code, true, time.Since(start))
			}
			return
		}
		h.local(w, r, Target{}, start, code, reason)
		if t.Metrics != nil {
			t.Metrics.Response(code, true, time.Since(start))
		}
		return
	}
	defer resp.Body.Close()
	latency := time.Since(start)
	if t.Done != nil {
		t.Done(balance.DoneInfo{Latency: latency})
	}
	hdr := w.Header()
	for k, v := range resp.Header {
		hdr[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	err = h.copyBody(w, resp.Body)
	for k, v := range resp.Trailer {
		hdr[http.TrailerPrefix+k] = v
	}
	if t.Metrics != nil {
		t.Metrics.Response(resp.StatusCode, failed(resp), latency)
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

// copyBody streams body to w, flushing after every read so streaming RPCs see each message at once.
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
			if fl != nil {
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

// local answers without forwarding; gRPC clients get a trailers-only response carrying the matching grpc-status.
func (h *handler) local(w http.ResponseWriter, r *http.Request, t Target, start time.Time, code int, reason string) {
	hdr := w.Header()
	hdr.Set("Trellis-Proxy-Error", reason)
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
	if t.Metrics != nil {
		t.Metrics.Response(code, code >= 500, time.Since(start))
	}
}
