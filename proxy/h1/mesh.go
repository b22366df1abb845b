package h1

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/h2"
	"github.com/trellis-mesh/trellis/proxy/headers"
	"github.com/trellis-mesh/trellis/proxy/mtls"
)

// Mesh carries requests to meshed endpoints over the mesh's multiplexed HTTP/2 connections; h2.Server implements
// it.
type Mesh interface {
	RoundTripMesh(req *http.Request, ep *balance.Endpoint) (*http.Response, error)
}

var _ Mesh = (*h2.Server)(nil)

var meshBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// viaMesh reports whether a request to ep goes over Mesh: ep has an identity, and the request is neither an upgrade
// nor a CONNECT (those become byte tunnels, which go over a pooled mesh TLS connection negotiating the transport
// protocol; the Connector takes care of that).
func (c *conn) viaMesh(ep *balance.Endpoint) bool {
	return c.s.Mesh != nil && ep.Identity != "" && !c.tunnelled()
}

// meshStream is an attempt's HTTP/2 stream over the mesh: its context and its request body.
type meshStream struct {
	cancel context.CancelFunc
	body   *meshBody
}

// end closes the response (if any) and the stream, and stops the body from reading the client; it reports whether
// the whole body had been sent, leaving the client connection ready for its next request.
func (s *meshStream) end(c *conn, resp *http.Response) bool {
	if resp != nil {
		resp.Body.Close()
	}
	s.cancel()
	return s.body.detach(c)
}

// tryMesh sends the request as an HTTP/2 stream over Mesh, waiting for the response headers until limit (zero:
// none; perTry says it is the per-try timeout's).
func (c *conn) tryMesh(a *attempt, t Target, ep *balance.Endpoint, body *replay, limit time.Time, perTry bool) {
	if c.req.expect100 && !c.req.http10 && !c.continued {
		// The proxy takes the body on the server's behalf: the mesh hop does not wait for approval.
		c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n") //nolint:errcheck // checked by Flush
		if err := c.bw.Flush(); err != nil {
			a.fail(err, 502, "client failed")
			a.outcome.Reset = true
			return
		}
		c.continued = true
	}
	req, mb := c.meshRequest(ep, t.RequestHeaders, body)
	ctx, cancel := context.WithCancel(context.Background())
	a.stream = &meshStream{cancel: cancel, body: mb}
	var timer *time.Timer
	var fired atomic.Bool
	if !limit.IsZero() {
		timer = time.AfterFunc(time.Until(limit), func() { fired.Store(true); cancel() })
	}
	resp, err := c.s.Mesh.RoundTripMesh(req.WithContext(ctx), ep)
	if timer != nil && !timer.Stop() && err == nil {
		// The deadline passed as the headers arrived: the stream is canceled already.
		resp.Body.Close()
		resp, err = nil, os.ErrDeadlineExceeded
	}
	if err == nil {
		a.resp = resp
		a.outcome.Status = resp.StatusCode
		// The transport may still be reading the client for the body: only a buffered body can be sent again.
		a.bodyRead = !body.complete
		return
	}
	a.stream.end(c, nil)
	a.bodyRead = mb.touched
	switch {
	case fired.Load():
		a.timedOut(t, perTry)
		a.err = os.ErrDeadlineExceeded
	default:
		code, reason := h2.UpstreamFailure(err, true)
		a.fail(err, code, reason)
		a.outcome.ConnectFailure, a.outcome.RefusedStream = h2.ConnectFailure(err), h2.RefusedStream(err)
		a.outcome.Reset = !a.outcome.ConnectFailure && !a.outcome.RefusedStream
	}
}

// finishMesh relays the response of a mesh attempt as HTTP/1.1 (chunked with trailers when the length is unknown,
// or until close for HTTP/1.0 clients).
func (c *conn) finishMesh(t Target, a *attempt, start time.Time) (keep bool) {
	resp := a.resp
	if t.Metrics != nil {
		t.Metrics.Response(resp.StatusCode, resp.StatusCode >= 500, c.s.now().Sub(start))
	}
	t.ResponseHeaders.Apply(resp.Header)
	keep = c.relayMeshResponse(resp)
	if !a.stream.end(c, resp) {
		// The server answered before the client sent its whole body: the client connection is out of step.
		keep = false
	}
	return keep
}

// meshRequest builds the HTTP/2 request for the current HTTP/1 request, its header fields changed by mod, its body
// read from body's buffer first, then from the client. Strings are copied out of the reused head buffer, since the
// transport may use them after the exchange.
func (c *conn) meshRequest(ep *balance.Endpoint, mod *headers.Modifier, body *replay) (*http.Request, *meshBody) {
	m := &c.req
	head := string(m.buf)
	sub := func(s span) string { return head[s.start:s.end] }
	target := sub(m.first[1])
	host := ""
	if m.hostIdx >= 0 {
		host = sub(m.headers[m.hostIdx].value)
	}
	if len(target) > 0 && target[0] != '/' && target != "*" {
		// absolute-form: its authority replaces Host (RFC 9112 §3.2.2).
		if u, err := url.Parse(target); err == nil && u.Host != "" {
			host, target = u.Host, u.RequestURI()
		}
	}
	if host == "" {
		host = ep.HostPort
	}
	u := &url.URL{Opaque: target}
	if len(target) > 1 && target[1] == '/' { // "//…" would read as an authority
		if pu, err := url.ParseRequestURI(target); err == nil {
			u = &url.URL{Path: pu.Path, RawPath: pu.RawPath, RawQuery: pu.RawQuery}
		}
	}
	hdr := make(http.Header, len(m.headers)+1)
	for i := range m.headers {
		h := &m.headers[i]
		if h.hop || i == m.hostIdx {
			continue
		}
		name := m.bytes(h.name)
		if eqFold(name, "content-length") || eqFold(name, "transfer-encoding") || eqFold(name, "expect") {
			continue
		}
		k := textproto.CanonicalMIMEHeaderKey(sub(h.name))
		hdr[k] = append(hdr[k], sub(h.value))
	}
	proto := "HTTP/1.1"
	if m.http10 {
		proto = "HTTP/1.0"
	}
	hdr[mtls.OrigProtoHeader] = []string{proto}
	if m.teTrailers {
		hdr["Te"] = []string{"trailers"}
	}
	mod.Apply(hdr)
	req := &http.Request{Method: sub(m.first[0]), URL: u, Host: host, Header: hdr, Proto: "HTTP/2.0", ProtoMajor: 2}
	b := &meshBody{br: c.br, client: c.br, remaining: m.contentLength}
	if body.buf != nil && (body.complete || body.partial) {
		b.pre = bytes.NewReader(*body.buf)
		b.br = bufio.NewReader(b.pre)
	}
	switch {
	case m.chunked:
		b.chunked, b.remaining = true, 0
		req.ContentLength, req.Trailer, req.Body = -1, http.Header{}, b
		b.trailer = req.Trailer
	case m.contentLength > 0:
		req.ContentLength, req.Body = m.contentLength, b
	default:
		b.done = true
		req.Body = http.NoBody
	}
	return req, b
}

// relayMeshResponse writes resp to the client and reports whether the client connection can carry another request.
func (c *conn) relayMeshResponse(resp *http.Response) bool {
	req, bw := &c.req, c.bw
	noBody := resp.StatusCode == 204 || resp.StatusCode == 304 || eqFold(req.bytes(req.first[0]), "head")
	length := !noBody && resp.ContentLength >= 0 && len(resp.Trailer) == 0
	chunked := !noBody && !length && !req.http10
	untilEOF := !noBody && !length && !chunked
	closeClient := req.connClose || req.http10 || untilEOF || c.s.draining.Load()

	bw.WriteString("HTTP/1.1 ")                      //nolint:errcheck // checked by Flush
	bw.WriteString(strconv.Itoa(resp.StatusCode))    //nolint:errcheck // checked by Flush
	bw.WriteByte(' ')                                //nolint:errcheck // checked by Flush
	bw.WriteString(http.StatusText(resp.StatusCode)) //nolint:errcheck // checked by Flush
	bw.WriteString("\r\n")                           //nolint:errcheck // checked by Flush
	for k, vs := range resp.Header {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Proxy-Connection", "Upgrade":
			continue
		}
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
	switch {
	case length || (noBody && resp.ContentLength >= 0 && resp.StatusCode != 204 && resp.StatusCode != 304):
		writeField(bw, "Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	case chunked:
		writeField(bw, "Transfer-Encoding", "chunked")
	}
	if closeClient {
		bw.WriteString("Connection: close\r\n") //nolint:errcheck // checked by Flush
	}
	bw.WriteString("\r\n") //nolint:errcheck // checked by Flush
	var err error
	if !noBody {
		err = c.copyMeshBody(resp.Body, chunked)
	}
	if err == nil && chunked {
		bw.WriteString("0\r\n") //nolint:errcheck // checked by Flush
		for k, vs := range resp.Trailer {
			for _, v := range vs {
				writeField(bw, k, v)
			}
		}
		bw.WriteString("\r\n") //nolint:errcheck // checked by Flush
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return err == nil && !closeClient
}

func writeField(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)      //nolint:errcheck // checked by Flush
	bw.WriteString(": ")   //nolint:errcheck // checked by Flush
	bw.WriteString(v)      //nolint:errcheck // checked by Flush
	bw.WriteString("\r\n") //nolint:errcheck // checked by Flush
}

// copyMeshBody relays an HTTP/2 response body, as chunks when chunked, flushing after every read so that streamed
// responses flow at once (except the read that ends the body: the caller's final flush sends it).
func (c *conn) copyMeshBody(body io.Reader, chunked bool) error {
	bp := meshBuffers.Get().(*[]byte)
	defer meshBuffers.Put(bp)
	buf := *bp
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if chunked {
				c.bw.WriteString(strconv.FormatInt(int64(n), 16)) //nolint:errcheck // checked by Flush
				c.bw.WriteString("\r\n")                          //nolint:errcheck // checked by Flush
			}
			c.bw.Write(buf[:n]) //nolint:errcheck // checked by Flush
			if chunked {
				c.bw.WriteString("\r\n") //nolint:errcheck // checked by Flush
			}
			if err == nil {
				if ferr := c.bw.Flush(); ferr != nil {
					return ferr
				}
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// meshBody is the request body of an HTTP/1 request sent over the mesh: it reads the client connection's buffered
// reader, decoding chunked framing (trailer fields go to trailer). The transport reads it from its own goroutine;
// detach makes sure it no longer touches the reader before the connection reads its next request.
type meshBody struct {
	mu        sync.Mutex
	br        *bufio.Reader // reads pre, then client
	client    *bufio.Reader // the client connection
	pre       *bytes.Reader // the buffered part of the body (see replay), or nil
	touched   bool          // client was read
	chunked   bool
	remaining int64 // bytes left in the current chunk or fixed-length body
	done      bool  // the whole body was read
	detached  bool
	err       error
	trailer   http.Header
}

var errDetached = errors.New("h1: request body relay ended")

// Read implements io.Reader.
func (b *meshBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.detached:
		return 0, errDetached
	case b.err != nil:
		return 0, b.err
	case b.done:
		return 0, io.EOF
	}
	n, err := b.read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		b.err = err
	}
	return n, err
}

// next switches from the buffered part of the body to the client once the former is consumed (buffered chunked
// bodies end on a line boundary, so the switch happens between framing elements).
func (b *meshBody) next() {
	if b.pre != nil && b.pre.Len() == 0 && b.br.Buffered() == 0 {
		b.pre, b.br = nil, b.client
	}
	if b.br == b.client {
		b.touched = true
	}
}

func (b *meshBody) read(p []byte) (int, error) {
	b.next()
	if b.remaining == 0 && b.chunked {
		if err := b.nextChunk(); err != nil {
			return 0, err
		}
		if b.done {
			return 0, io.EOF
		}
		b.next()
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.br.Read(p)
	b.remaining -= int64(n)
	if errors.Is(err, io.EOF) {
		return n, io.ErrUnexpectedEOF
	}
	if b.remaining == 0 {
		if !b.chunked {
			b.done = true
			return n, io.EOF
		}
		crlf, err := b.br.ReadSlice('\n')
		if err != nil {
			return n, chunkErr(err)
		}
		if !bytes.Equal(crlf, []byte("\r\n")) && !bytes.Equal(crlf, []byte("\n")) {
			return n, errBadChunk
		}
	}
	return n, err
}

// nextChunk reads a chunk-size line; at the last chunk it reads the trailer section and marks the body done.
func (b *meshBody) nextChunk() error {
	line, err := b.br.ReadSlice('\n')
	if err != nil {
		return chunkErr(err)
	}
	size, ok := parseChunkSize(line)
	if !ok {
		return errBadChunk
	}
	if size > 0 {
		b.remaining = size
		return nil
	}
	total := 0
	for {
		line, err := b.br.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		if total += len(line); total > maxTrailerBytes {
			return errBadChunk
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			b.done = true
			return nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return errBadChunk
		}
		k := textproto.CanonicalMIMEHeaderKey(string(line[:colon]))
		b.trailer[k] = append(b.trailer[k], string(bytes.TrimSpace(line[colon+1:])))
	}
}

// Close implements io.Closer; the transport calls it when it is done with the body.
func (b *meshBody) Close() error { return nil }

// detachGrace is how long detach lets a read in progress finish before interrupting it.
const detachGrace = 100 * time.Millisecond

// detach stops the body from reading the client connection: later reads fail, and a read still in progress after
// detachGrace (waiting for a client that will not send more) is interrupted. It reports whether the whole body had
// been read without interruption, which leaves the connection ready for its next request.
func (b *meshBody) detach(c *conn) bool {
	if b.mu.TryLock() { // no read in progress
		b.detached = true
		done := b.done
		b.mu.Unlock()
		return done
	}
	wake := time.AfterFunc(detachGrace, func() {
		c.nc.SetReadDeadline(time.Unix(1, 0)) //nolint:errcheck // best effort: wakes the body reader
	})
	b.mu.Lock()
	interrupted := !wake.Stop()
	b.detached = true
	done := b.done
	b.mu.Unlock()
	return done && !interrupted
}
