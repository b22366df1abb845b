// Package h1 forwards HTTP/1.x requests from a client connection to upstream endpoints over pooled keep-alive
// connections. It parses only message heads (into buffers reused across requests) and relays bodies verbatim: fixed
// length, chunked with trailers, or until close. It handles 100-continue, protocol upgrades (WebSocket) as tunnels and
// hop-by-hop fields as RFC 9110 §7.6.1 says.
package h1

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/circuit"
	"github.com/trellis-mesh/trellis/proxy/headers"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/retry"
	"github.com/trellis-mesh/trellis/proxy/tcp"
)

// Request is the read-only view of a request head that a Router sees. It is valid only during Route.
type Request struct{ m *message }

// Method returns the request method.
func (r *Request) Method() string { return r.m.str(r.m.first[0]) }

// Target returns the request-target as sent.
func (r *Request) Target() string { return r.m.str(r.m.first[1]) }

// Path returns the request-target's path (absolute-form targets included), without the query.
func (r *Request) Path() string {
	t := r.Target()
	if len(t) > 0 && t[0] != '/' {
		if i := indexString(t, "://"); i >= 0 {
			t = t[i+3:]
			j := 0
			for j < len(t) && t[j] != '/' {
				j++
			}
			t = t[j:]
		}
	}
	for i := 0; i < len(t); i++ {
		if t[i] == '?' {
			return t[:i]
		}
	}
	return t
}

// Header returns the first value of the header lowerName (which must be lowercase).
func (r *Request) Header(lowerName string) (string, bool) { return r.m.header(lowerName) }

// Host returns the Host header, or "" when absent.
func (r *Request) Host() string {
	if r.m.hostIdx < 0 {
		return ""
	}
	return r.m.str(r.m.headers[r.m.hostIdx].value)
}

func indexString(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// Target says where one request goes.
type Target struct {
	// Endpoint receives the request (its first attempt) when Status is 0.
	Endpoint *balance.Endpoint
	// Done, when set, is called once with the outcome of the attempt sent to Endpoint (a Picker's callback): Err
	// for no response, Failed for a 5xx, Latency the time to the response headers.
	Done func(balance.DoneInfo)
	// Timeout bounds the time from the request to its final response headers, retries included; 0 means none. On
	// expiry the client gets 504 with trellis-proxy-error "request timed out after <Timeout>".
	Timeout time.Duration
	// Retry decides which failed attempts are retried, how often and after which backoff, within its budget; it also
	// sets the per-try timeout and how much of a request body is buffered for replay. Nil: one attempt.
	Retry *retry.Plan
	// Picker chooses the endpoint of each retry (the backend's Picker). Nil: no retry.
	Picker balance.Picker
	// RequestHeaders and ResponseHeaders change the forwarded request's and the relayed response's header fields.
	// Nil changes nothing.
	RequestHeaders, ResponseHeaders *headers.Modifier
	// Breaker bounds the service's requests in flight (a request may wait for a slot until Timeout); a request it
	// refuses gets 503. Nil: unlimited.
	Breaker *circuit.Breaker
	// Metrics records the request; nil records nothing.
	Metrics *metrics.Route
	// Status, when non-zero, answers the request locally with this status instead of forwarding it.
	Status int
	// Reason explains a local answer in the trellis-proxy-error response header.
	Reason string
}

// Router decides where each request goes. Route must not block; it runs once per request.
type Router interface {
	Route(r *Request) Target
}

// Server relays HTTP/1.x client connections.
type Server struct {
	// Pool holds upstream connections. Required.
	Pool *Pool
	// Mesh, when set, carries requests to endpoints with an identity over the mesh's multiplexed HTTP/2 (upgrades and
	// CONNECT excepted: they are tunnelled over Pool, whose Connector wraps them in mesh TLS). Default nil: every
	// request goes over Pool.
	Mesh Mesh
	// IdleTimeout closes a client connection that waits this long for its next request. Default 90s.
	IdleTimeout time.Duration
	// Log receives connection-level failures at debug level. Default slog.Default().
	Log *slog.Logger
	// Now returns the current time. Default time.Now.
	Now func() time.Time

	draining atomic.Bool
	mu       sync.Mutex
	conns    map[*conn]struct{}
}

// connection states for graceful shutdown.
const (
	stateIdle int32 = iota
	stateActive
	stateClosing
)

type conn struct {
	s         *Server
	nc        net.Conn
	br        *bufio.Reader
	bw        *bufio.Writer
	req       message
	resp      message
	view      Request
	state     atomic.Int32
	bodyCh    chan error
	continued bool // the proxy answered the current request's Expect: 100-continue itself
}

var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufferSize) }}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) log() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

// ServeConn serves requests on nc until the client closes it, an error occurs, or Shutdown. br reads nc and may hold
// bytes already peeked by detection. ServeConn closes nc.
func (s *Server) ServeConn(nc net.Conn, br *bufio.Reader, router Router) {
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(nc)
	c := &conn{s: s, nc: nc, br: br, bw: bw, bodyCh: make(chan error, 1)}
	c.view.m = &c.req
	s.track(c, true)
	defer func() {
		s.track(c, false)
		nc.Close()
		bw.Reset(nil)
		writers.Put(bw)
	}()
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = 90 * time.Second
	}
	for {
		if br.Buffered() == 0 {
			nc.SetReadDeadline(s.now().Add(idle)) //nolint:errcheck // a failure shows up on the read
			_, err := br.Peek(1)
			nc.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
			if err != nil {
				return
			}
		}
		if !c.state.CompareAndSwap(stateIdle, stateActive) {
			return
		}
		if !c.serve(router) {
			return
		}
		if !c.state.CompareAndSwap(stateActive, stateIdle) || s.draining.Load() {
			return
		}
	}
}

// Shutdown makes every connection close: idle ones now, busy ones after their current response (which carries
// Connection: close). New connections given to ServeConn afterwards serve one request at most.
func (s *Server) Shutdown() {
	s.draining.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.state.CompareAndSwap(stateIdle, stateClosing) {
			c.nc.SetReadDeadline(time.Unix(1, 0)) //nolint:errcheck // best effort: wakes the idle read
		}
	}
}

// Active returns the number of client connections being served.
func (s *Server) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) track(c *conn, add bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.conns == nil {
			s.conns = map[*conn]struct{}{}
		}
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
}

// serve handles one request and reports whether the client connection can carry another.
func (c *conn) serve(router Router) bool {
	c.continued = false
	if err := c.req.readHead(c.br, true); err != nil {
		switch {
		case errors.Is(err, errHeaderTooLarge):
			c.localReply(431, "request head too large")
		case errors.Is(err, errMalformed), errors.Is(err, errBadLength):
			c.localReply(400, "malformed request")
		}
		return false
	}
	start := c.s.now()
	t := router.Route(&c.view)
	if t.Metrics != nil {
		t.Metrics.Request()
	}
	if t.Status != 0 {
		if t.Metrics != nil {
			t.Metrics.Response(t.Status, t.Status >= 500, c.s.now().Sub(start))
		}
		c.localReply(t.Status, t.Reason)
		return false
	}
	return c.forward(t, start)
}

func (c *conn) hasBody() bool { return c.req.contentLength > 0 || c.req.chunked }

// forward sends the request upstream, retrying failed attempts as t.Retry allows (each on an endpoint t.Picker
// chooses), and relays the final response, or answers with the proxy's error.
func (c *conn) forward(t Target, start time.Time) (keep bool) {
	var deadline time.Time
	if t.Timeout > 0 {
		deadline = start.Add(t.Timeout)
	}
	if t.Breaker != nil {
		if err := t.Breaker.Acquire(deadline, nil); err != nil {
			if t.Done != nil {
				t.Done(balance.DoneInfo{Canceled: true})
			}
			return c.reply(t, start, 503, err.Error(), err)
		}
		defer t.Breaker.Release()
	}
	plan := t.Retry
	if plan != nil {
		plan.Budget.Deposit()
	}
	var body replay
	defer body.release()
	if plan != nil && plan.MaxBodyBytes > 0 && c.hasBody() && !c.tunnelled() {
		if err := c.bufferBody(&body, plan.MaxBodyBytes, deadline); err != nil {
			if t.Done != nil {
				t.Done(balance.DoneInfo{Canceled: true})
			}
			if errors.Is(err, errBadChunk) {
				c.localReply(400, "malformed request body")
			}
			return false
		}
	}
	ep, done := t.Endpoint, t.Done
	method := c.req.str(c.req.first[0])
	for n := 0; ; n++ {
		var a attempt
		c.try(&a, t, ep, &body, deadline)
		if a.err != nil && c.br.Buffered() == 0 && peerClosed(c.nc) {
			a.canceled = true // nobody waits for an answer: no retry either
		}
		now := c.s.now()
		info := a.doneInfo(now.Sub(a.start))
		if plan == nil || t.Picker == nil || a.canceled {
			report(done, info)
			return c.finish(t, &a, start)
		}
		left := retry.NoDeadline
		if !deadline.IsZero() {
			left = deadline.Sub(now)
		}
		delay, again := plan.Decide(method, n, a.outcome, body.replayable(c, &a), left)
		if !again {
			report(done, info)
			return c.finish(t, &a, start)
		}
		c.abandon(&a)
		if delay > 0 {
			time.Sleep(delay)
		}
		// The failed attempt is reported after the retry's pick: the endpoint still counts it as in flight, so the
		// pick leans away from it.
		next, nextDone, err := balance.PickExcept(t.Picker, ep.Addr, retryPicks)
		report(done, info)
		if err != nil {
			nextDone(balance.DoneInfo{Err: err})
			return c.reply(t, start, 503, "no endpoints", err)
		}
		ep, done = next, nextDone
	}
}

// report calls a picker's done callback, if any.
func report(done func(balance.DoneInfo), d balance.DoneInfo) {
	if done != nil {
		done(d)
	}
}

// tunnelled reports whether the request becomes a byte tunnel (an upgrade or CONNECT): its body is not buffered.
func (c *conn) tunnelled() bool {
	return (c.req.connUpgrade && c.req.upgrade) || eqFold(c.req.bytes(c.req.first[0]), "connect")
}

// try makes one attempt of the request to ep and records its outcome in a: the response head (in c.resp for the
// plain path, a.resp over the mesh), or the failure and the answer the client would get.
func (c *conn) try(a *attempt, t Target, ep *balance.Endpoint, body *replay, deadline time.Time) {
	a.start = c.s.now()
	limit, perTry := deadline, false
	if t.Retry != nil && t.Retry.PerTryTimeout > 0 {
		if d := a.start.Add(t.Retry.PerTryTimeout); limit.IsZero() || d.Before(limit) {
			limit, perTry = d, true
		}
	}
	if c.viaMesh(ep) {
		c.tryMesh(a, t, ep, body, limit, perTry)
		return
	}
	u, reused, err := c.s.Pool.get(ep)
	if err != nil {
		a.fail(err, 502, "connect failed")
		a.outcome.ConnectFailure = true
		return
	}
	for redialled := false; ; {
		err = c.send(u, t, body, a)
		if err == nil {
			err = c.readResponse(u, limit)
		}
		if err == nil {
			a.u = u
			a.outcome.Status = c.resp.status
			return
		}
		u.conn.Close()
		// A reused connection the server closed while idle fails before any response byte: try once more on a new
		// connection when the whole request can be sent again.
		if reused && !redialled && !a.bodyRunning && (!c.hasBody() || body.complete) && retryable(err) {
			if u, err = c.s.Pool.dial(ep); err != nil {
				a.fail(err, 502, "connect failed")
				a.outcome.ConnectFailure = true
				return
			}
			redialled = true
			continue
		}
		if a.bodyRunning {
			c.stopBody()
			a.bodyRunning = false
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			a.timedOut(t, perTry)
			a.err = err
			return
		}
		a.fail(err, 502, "upstream failed")
		a.outcome.Reset = true
		return
	}
}

// send writes the request head upstream, then the body: at once when it is buffered, else by a relay goroutine
// reading the client (a.bodyRunning).
func (c *conn) send(u *upstream, t Target, body *replay, a *attempt) error {
	writeRequestHead(u.bw, &c.req, t.RequestHeaders)
	switch {
	case !c.hasBody():
		return u.bw.Flush()
	case body.complete:
		u.bw.Write(*body.buf) //nolint:errcheck // checked by Flush
		return u.bw.Flush()
	case body.partial:
		u.bw.Write(*body.buf) //nolint:errcheck // checked by Flush
	}
	// Send the head at once: the server may answer 100 Continue, and starts work while the body streams.
	if err := u.bw.Flush(); err != nil {
		return err
	}
	a.bodyRunning, a.bodyRead = true, true
	partial, pending, chunked, length := body.partial, body.pending, c.req.chunked, c.req.contentLength
	go func() {
		var err error
		switch {
		case partial:
			err = copyChunkedRest(u.bw, c.br, pending)
		case chunked:
			err = copyChunked(u.bw, c.br)
		default:
			err = copyN(u.bw, c.br, length)
		}
		if err == nil {
			err = u.bw.Flush()
		}
		c.bodyCh <- err
	}()
	return nil
}

// bodyGrace is how long a relayed response waits for the request body relay to report its end: the relay has
// usually sent the whole body already (the server answered after reading it) and only has to be scheduled.
const bodyGrace = 100 * time.Millisecond

// awaitBody waits up to bodyGrace for the request body relay to end and returns its error; finished is false when it
// is still running (waiting for the client).
func (c *conn) awaitBody() (err error, finished bool) {
	select {
	case err = <-c.bodyCh:
		return err, true
	default:
	}
	runtime.Gosched()
	select {
	case err = <-c.bodyCh:
		return err, true
	default:
	}
	t := time.NewTimer(bodyGrace)
	defer t.Stop()
	select {
	case err = <-c.bodyCh:
		return err, true
	case <-t.C:
		return nil, false
	}
}

// stopBody interrupts a body relay that may be waiting for the client and waits for it to end. The client
// connection cannot carry another request afterwards.
func (c *conn) stopBody() {
	c.nc.SetReadDeadline(time.Unix(1, 0)) //nolint:errcheck // best effort: wakes the body reader
	<-c.bodyCh                            //nolint:errcheck // the relay was interrupted on purpose; its error says only that
}

// readResponse reads the final response head until deadline (zero: none), relaying interim (1xx) responses to the
// client.
func (c *conn) readResponse(u *upstream, deadline time.Time) error {
	if !deadline.IsZero() {
		u.conn.SetReadDeadline(deadline)          //nolint:errcheck // a failure shows up on the read
		defer u.conn.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
	}
	for {
		if err := c.resp.readHead(u.br, false); err != nil {
			return err
		}
		if c.resp.status >= 200 || c.resp.status == 101 {
			return nil
		}
		if c.req.http10 {
			continue // RFC 9110 §15.2: no interim responses to HTTP/1.0 clients
		}
		writeResponseHead(c.bw, &c.resp, false, false, nil)
		if err := c.bw.Flush(); err != nil {
			return err
		}
	}
}

func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func retryable(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		isConnReset(err)
}

// relayResponse sends the response to the client (its header fields changed by mod) and recycles the upstream
// connection when possible.
func (c *conn) relayResponse(u *upstream, bodyRunning bool, mod *headers.Modifier) bool {
	req, resp := &c.req, &c.resp
	noBody := resp.status == 204 || resp.status == 304 || eqFold(c.req.bytes(req.first[0]), "head")
	untilEOF := !noBody && !resp.chunked && resp.contentLength < 0
	closeClient := req.connClose || req.http10 || untilEOF || resp.otherCoding || c.s.draining.Load()
	upstreamOK := !resp.connClose && !resp.http10 && !untilEOF && !resp.otherCoding
	writeResponseHead(c.bw, resp, closeClient, false, mod)
	var err error
	switch {
	case noBody:
	case resp.chunked:
		err = copyChunked(c.bw, u.br)
	case resp.contentLength >= 0:
		err = copyN(c.bw, u.br, resp.contentLength)
	default:
		err = copyEOF(c.bw, u.br)
	}
	if ferr := c.bw.Flush(); err == nil {
		err = ferr
	}
	if bodyRunning {
		berr, finished := c.awaitBody()
		if !finished {
			// The server answered before the client finished its body (for example a refused 100-continue):
			// neither connection is in a known state any more.
			u.conn.Close()
			c.stopBody()
			return false
		}
		if berr != nil {
			closeClient, upstreamOK = true, false
		}
	}
	if err != nil {
		upstreamOK, closeClient = false, true
		if c.s.log().Enabled(context.Background(), slog.LevelDebug) {
			c.s.log().Debug("Response relay failed", "error", err)
		}
	}
	if upstreamOK {
		c.s.Pool.put(u)
	} else {
		u.conn.Close()
	}
	return !closeClient
}

// tunnel relays a 101 Switching Protocols response and then bytes both ways until either side closes.
func (c *conn) tunnel(u *upstream, bodyRunning bool, mod *headers.Modifier) bool {
	if bodyRunning {
		if err := <-c.bodyCh; err != nil {
			c.nc.Close()
			u.conn.Close()
			return false
		}
	}
	if !c.req.connUpgrade || !c.req.upgrade {
		u.conn.Close()
		c.localReply(502, "unsolicited protocol switch")
		return false
	}
	writeResponseHead(c.bw, &c.resp, false, true, mod)
	if n := u.br.Buffered(); n > 0 {
		b, _ := u.br.Peek(n)
		c.bw.Write(b) //nolint:errcheck // checked by Flush
	}
	if err := c.bw.Flush(); err != nil {
		u.conn.Close()
		return false
	}
	tcp.Forward(c.nc, u.conn, tcp.Options{ClientReader: c.br}) //nolint:errcheck // the tunnel's end is its result
	return false
}

// reply answers the client with a proxy error and counts it.
func (c *conn) reply(t Target, start time.Time, code int, reason string, err error) bool {
	latency := c.s.now().Sub(start)
	if t.Metrics != nil {
		t.Metrics.Response(code, true, latency)
	}
	if c.s.log().Enabled(context.Background(), slog.LevelDebug) {
		c.s.log().Debug("Request failed", "endpoint", t.Endpoint.HostPort, "status", code, "reason", reason,
			"error", err)
	}
	c.localReply(code, reason)
	return false
}

// localReply answers with an empty-bodied response and Connection: close. A 403 carries the reason in
// trellis-deny-reason; other statuses in trellis-proxy-error.
func (c *conn) localReply(code int, reason string) {
	c.bw.WriteString("HTTP/1.1 ")      //nolint:errcheck // checked by Flush
	c.bw.WriteString(statusLine(code)) //nolint:errcheck // checked by Flush
	_, _ = c.bw.WriteString("\r\ncontent-length: 0\r\nconnection: close\r\n")
	if code == 403 {
		_, _ = c.bw.WriteString("trellis-proxy-error: unauthorized\r\ntrellis-deny-reason: ")
		c.bw.WriteString(reason) //nolint:errcheck // checked by Flush
		c.bw.WriteString("\r\n") //nolint:errcheck // checked by Flush
	} else if reason != "" {
		c.bw.WriteString("trellis-proxy-error: ") //nolint:errcheck // checked by Flush
		c.bw.WriteString(reason)                  //nolint:errcheck // checked by Flush
		c.bw.WriteString("\r\n")                  //nolint:errcheck // checked by Flush
	}
	c.bw.WriteString("\r\n") //nolint:errcheck // checked by Flush
	c.bw.Flush()
}

func statusLine(code int) string {
	switch code {
	case 400:
		return "400 Bad Request"
	case 403:
		return "403 Forbidden"
	case 404:
		return "404 Not Found"
	case 431:
		return "431 Request Header Fields Too Large"
	case 502:
		return "502 Bad Gateway"
	case 503:
		return "503 Service Unavailable"
	case 504:
		return "504 Gateway Timeout"
	}
	return "500 Internal Server Error"
}

// writeRequestHead writes the request line and end-to-end fields changed by mod, re-adding the hop-by-hop fields
// this hop needs.
func writeRequestHead(w *bufio.Writer, m *message, mod *headers.Modifier) {
	w.Write(m.bytes(m.first[0])) //nolint:errcheck // checked by Flush
	w.WriteByte(' ')             //nolint:errcheck // checked by Flush
	w.Write(m.bytes(m.first[1])) //nolint:errcheck // checked by Flush
	w.WriteByte(' ')             //nolint:errcheck // checked by Flush
	w.Write(m.bytes(m.first[2])) //nolint:errcheck // checked by Flush
	w.WriteString("\r\n")        //nolint:errcheck // checked by Flush
	upgrade := m.connUpgrade && m.upgrade
	writeFields(w, m, upgrade, mod)
	if m.teTrailers {
		w.WriteString("te: trailers\r\n") //nolint:errcheck // checked by Flush
	}
	if upgrade {
		w.WriteString("connection: upgrade\r\n") //nolint:errcheck // checked by Flush
	}
	w.WriteString("\r\n") //nolint:errcheck // checked by Flush
}

// writeResponseHead writes the status line and end-to-end fields changed by mod; closing adds Connection: close,
// upgrade keeps the Upgrade field and adds Connection: upgrade.
func writeResponseHead(w *bufio.Writer, m *message, closing, upgrade bool, mod *headers.Modifier) {
	w.Write(m.bytes(m.first[0])) //nolint:errcheck // checked by Flush
	w.WriteByte(' ')             //nolint:errcheck // checked by Flush
	w.Write(m.bytes(m.first[1])) //nolint:errcheck // checked by Flush
	w.WriteByte(' ')             //nolint:errcheck // checked by Flush
	w.Write(m.bytes(m.first[2])) //nolint:errcheck // checked by Flush
	w.WriteString("\r\n")        //nolint:errcheck // checked by Flush
	writeFields(w, m, upgrade, mod)
	switch {
	case upgrade:
		w.WriteString("connection: upgrade\r\n") //nolint:errcheck // checked by Flush
	case closing:
		w.WriteString("connection: close\r\n") //nolint:errcheck // checked by Flush
	}
	w.WriteString("\r\n") //nolint:errcheck // checked by Flush
}

func writeFields(w *bufio.Writer, m *message, keepUpgrade bool, mod *headers.Modifier) {
	for i := range m.headers {
		h := &m.headers[i]
		if h.hop && (!keepUpgrade || !eqFold(m.bytes(h.name), "upgrade")) {
			continue
		}
		if mod != nil && mod.Drops(m.bytes(h.name)) {
			continue
		}
		w.Write(m.bytes(h.name))  //nolint:errcheck // checked by Flush
		w.WriteString(": ")       //nolint:errcheck // checked by Flush
		w.Write(m.bytes(h.value)) //nolint:errcheck // checked by Flush
		w.WriteString("\r\n")     //nolint:errcheck // checked by Flush
	}
	if mod != nil {
		for _, f := range mod.Set {
			writeField(w, f.Name, f.Value)
		}
		for _, f := range mod.Add {
			writeField(w, f.Name, f.Value)
		}
	}
}
