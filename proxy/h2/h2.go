// Package h2 forwards HTTP/2 with prior knowledge (h2c, as gRPC speaks it) stream by stream to upstream endpoints over
// multiplexed HTTP/2 connections. Bodies stream in both directions through a fixed buffer under HTTP/2 flow control;
// trailers (gRPC status) and resets pass through; Shutdown sends GOAWAY.
package h2

import (
	"bufio"
	"context"
	"crypto/tls"
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

	"golang.org/x/net/http2"

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

// Server serves HTTP/2 client connections.
type Server struct {
	// Log receives stream failures at debug level.
	Log *slog.Logger

	h2s       *http2.Server
	base      *http.Server
	transport *http2.Transport
	bufs      sync.Pool
	wg        sync.WaitGroup
}

// Options configure NewServer.
type Options struct {
	// Connector opens upstream connections. Required.
	Connector mtls.Connector
	// IdleTimeout closes client and upstream connections without streams for this long. Default 90s.
	IdleTimeout time.Duration
	// MaxConcurrentStreams is advertised to clients. Default 1000.
	MaxConcurrentStreams uint32
	// Log receives stream failures at debug level. Default slog.Default().
	Log *slog.Logger
}

// NewServer returns a Server that forwards over its own HTTP/2 transport.
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
	s := &Server{Log: o.Log}
	// Advertise the protocol's default maximum frame size (RFC 9113 §6.5.2) rather than x/net's 1 MiB, so frames
	// larger than 16 KiB are refused with FRAME_SIZE_ERROR as peers expect.
	s.h2s = &http2.Server{IdleTimeout: o.IdleTimeout, MaxConcurrentStreams: o.MaxConcurrentStreams,
		MaxReadFrameSize: 16 << 10}
	s.base = &http.Server{ErrorLog: slog.NewLogLogger(o.Log.Handler(), slog.LevelDebug)}
	if err := http2.ConfigureServer(s.base, s.h2s); err != nil {
		panic(err) // only fails on TLS settings, which are not used
	}
	connector := o.Connector
	s.transport = &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, addr string, _ *tls.Config) (net.Conn, error) {
			ap, err := netip.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			return connector.Connect(ctx, &balance.Endpoint{Addr: ap, HostPort: addr})
		},
		IdleConnTimeout: o.IdleTimeout,
		ReadIdleTimeout: 30 * time.Second,
		PingTimeout:     15 * time.Second,
	}
	s.bufs.New = func() any { b := make([]byte, 32<<10); return &b }
	return s
}

// peeked is a connection whose first bytes were read ahead into a bufio.Reader by detection.
type peeked struct {
	net.Conn
	r *bufio.Reader
}

// Read reads the peeked bytes first, then the connection.
func (p *peeked) Read(b []byte) (int, error) { return p.r.Read(b) }

// ServeConn serves streams on c until the client or Shutdown ends the connection. br holds bytes already peeked.
func (s *Server) ServeConn(ctx context.Context, c net.Conn, br *bufio.Reader, router Router) {
	s.wg.Add(1)
	defer s.wg.Done()
	s.h2s.ServeConn(&peeked{Conn: c, r: br}, &http2.ServeConnOpts{
		Context:    ctx,
		BaseConfig: s.base,
		Handler:    &handler{s: s, router: router},
	})
}

// Shutdown sends GOAWAY on every connection and waits, until ctx ends, for their streams to finish.
func (s *Server) Shutdown(ctx context.Context) {
	s.base.Shutdown(ctx) //nolint:errcheck // nothing listens on base: this only triggers GOAWAY
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// CloseIdle closes idle upstream connections.
func (s *Server) CloseIdle() { s.transport.CloseIdleConnections() }

type handler struct {
	s      *Server
	router Router
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// ServeHTTP forwards one stream.
func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	t := h.router.Route(r)
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
