package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/retry"
)

// retryPicks is how many picks a retry makes to find another endpoint than the one that just failed.
const retryPicks = 3

// attempt is one try of a request: the endpoint's answer or the failure, as the retry decision and the client see
// it.
type attempt struct {
	start       time.Time
	u           *upstream      // plain path: the connection whose response head is in conn.resp
	resp        *http.Response // mesh path: the response
	stream      *meshStream    // mesh path: the stream's context and body
	err         error          // no response: why
	code        int            // no response: the status the client gets
	reason      string         // no response: the trellis-proxy-error text
	outcome     retry.Outcome
	bodyRunning bool // plain path: a goroutine relays the request body from the client
	bodyRead    bool // the part of the request body not buffered was (perhaps partly) read from the client
	canceled    bool // no response, and the client has gone away: the attempt says nothing about the endpoint
}

func (a *attempt) fail(err error, code int, reason string) {
	a.err, a.code, a.reason = err, code, reason
}

// timedOut records that the attempt's deadline passed before response headers: the per-try timeout when perTry,
// else the request's.
func (a *attempt) timedOut(t Target, perTry bool) {
	a.code, a.outcome.Timeout = 504, true
	if perTry {
		a.reason = "request attempt timed out after " + t.Retry.PerTryTimeout.String() + " (per-try timeout)"
		return
	}
	a.reason = "request timed out after " + t.Timeout.String()
}

// doneInfo reports the attempt to the balancer: no response is an error, a failing status a failure.
func (a *attempt) doneInfo(latency time.Duration) balance.DoneInfo {
	if a.canceled {
		return balance.DoneInfo{Canceled: true, Latency: latency}
	}
	if a.err != nil {
		return balance.DoneInfo{Err: a.err, Latency: latency}
	}
	return balance.DoneInfo{Failed: a.outcome.Failure(), Latency: latency}
}

// finish answers the client with the attempt's result: the proxy's error, or the relayed response.
func (c *conn) finish(t Target, a *attempt, start time.Time) bool {
	if a.err != nil {
		return c.reply(t, start, a.code, a.reason, a.err)
	}
	if a.resp != nil {
		return c.finishMesh(t, a, start)
	}
	code := c.resp.status
	if t.Metrics != nil {
		t.Metrics.Response(code, code >= 500, c.s.now().Sub(start))
	}
	if code == 101 {
		return c.tunnel(a.u, a.bodyRunning, t.ResponseHeaders)
	}
	return c.relayResponse(a.u, a.bodyRunning, t.ResponseHeaders)
}

// abandon discards an attempt that is retried: its response is drained (so the connection can be reused) or its
// connection closed.
func (c *conn) abandon(a *attempt) {
	switch {
	case a.stream != nil:
		a.stream.end(c, a.resp)
	case a.u != nil:
		c.discardResponse(a.u)
	}
}

// maxDrain bounds the body of a retried attempt's response that is read to keep its connection; a longer one
// closes the connection.
const maxDrain = 64 << 10

// drainTimeout bounds reading a retried attempt's response body.
const drainTimeout = time.Second

// discardResponse reads and drops the body of the response in c.resp, then returns u to the pool, or closes it.
func (c *conn) discardResponse(u *upstream) {
	resp := &c.resp
	keep := !resp.connClose && !resp.http10 && !resp.otherCoding
	noBody := resp.status == 204 || resp.status == 304 || eqFold(c.req.bytes(c.req.first[0]), "head")
	var err error
	u.conn.SetReadDeadline(c.s.now().Add(drainTimeout)) //nolint:errcheck // a failure shows up on the read
	switch {
	case noBody:
	case resp.chunked:
		w := writers.Get().(*bufio.Writer)
		w.Reset(io.Discard)
		err = copyChunked(w, u.br)
		w.Reset(nil)
		writers.Put(w)
	case resp.contentLength >= 0 && resp.contentLength <= maxDrain:
		_, err = u.br.Discard(int(resp.contentLength))
	default:
		keep = false
	}
	u.conn.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
	if keep && err == nil {
		c.s.Pool.put(u)
		return
	}
	u.conn.Close()
}

// replay is a request body buffered so that the request can be sent again: the bytes as the client sent them
// (chunked framing included).
type replay struct {
	buf      *[]byte // from bodyBuffers; nil when nothing was buffered
	complete bool    // buf holds the whole body
	partial  bool    // chunked: buf holds the body up to a chunk-size line; that chunk's data and the rest follow
	pending  int64   // partial: data bytes of the current chunk still to read from the client
}

var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// maxPooledBody bounds the buffers kept for reuse.
const maxPooledBody = 1 << 20

func (b *replay) release() {
	if b.buf == nil {
		return
	}
	if cap(*b.buf) <= maxPooledBody {
		*b.buf = (*b.buf)[:0]
		bodyBuffers.Put(b.buf)
	}
	b.buf = nil
}

// replayable reports whether the request can be sent again after attempt a: it has no body, its body is buffered,
// or nothing of the unbuffered part has been read yet.
func (b *replay) replayable(c *conn, a *attempt) bool {
	return !c.hasBody() || b.complete || !a.bodyRead
}

// bufferBody reads the request body into b when it fits in limit bytes, answering Expect: 100-continue itself first
// (the Expect field is then not forwarded). A chunked body longer than limit is buffered up to a chunk boundary; the
// rest streams on the first attempt. A fixed-length body longer than limit is not read at all. Reading the client
// ends at deadline (zero: none).
func (c *conn) bufferBody(b *replay, limit int, deadline time.Time) error {
	m := &c.req
	if !m.chunked && m.contentLength > int64(limit) {
		return nil
	}
	if m.expect100 && !m.http10 {
		c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n") //nolint:errcheck // checked by Flush
		if err := c.bw.Flush(); err != nil {
			return err
		}
		c.continued = true
	}
	for i := range m.headers {
		if eqFold(m.bytes(m.headers[i].name), "expect") {
			m.headers[i].hop = true
		}
	}
	if !deadline.IsZero() {
		c.nc.SetReadDeadline(deadline)          //nolint:errcheck // a failure shows up on the read
		defer c.nc.SetReadDeadline(time.Time{}) //nolint:errcheck // as above
	}
	b.buf = bodyBuffers.Get().(*[]byte)
	buf := (*b.buf)[:0]
	defer func() { *b.buf = buf }()
	if !m.chunked {
		n := int(m.contentLength)
		buf = grow(buf, n)
		if _, err := io.ReadFull(c.br, buf[:n]); err != nil {
			return err
		}
		buf = buf[:n]
		b.complete = true
		return nil
	}
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return errBadChunk
		}
		buf = append(buf, line...)
		if size == 0 {
			for total := 0; ; {
				line, err := c.br.ReadSlice('\n')
				if err != nil {
					return chunkErr(err)
				}
				if total += len(line); total > maxTrailerBytes {
					return errBadChunk
				}
				buf = append(buf, line...)
				if len(bytes.TrimRight(line, "\r\n")) == 0 {
					b.complete = true
					return nil
				}
			}
		}
		if int64(len(buf))+size+2 > int64(limit) {
			b.partial, b.pending = true, size
			return nil
		}
		n := len(buf)
		buf = grow(buf, int(size))
		if _, err := io.ReadFull(c.br, buf[n:n+int(size)]); err != nil {
			return err
		}
		buf = buf[:n+int(size)]
		crlf, err := c.br.ReadSlice('\n')
		if err != nil {
			return chunkErr(err)
		}
		if !bytes.Equal(crlf, []byte("\r\n")) && !bytes.Equal(crlf, []byte("\n")) {
			return errBadChunk
		}
		buf = append(buf, crlf...)
	}
}

// grow returns buf with room for n more bytes beyond its length.
func grow(buf []byte, n int) []byte { return slices.Grow(buf, n) }

// copyChunkedRest relays the rest of a chunked body whose current chunk has pending data bytes left (its size line
// already sent), then the following chunks.
func copyChunkedRest(dst *bufio.Writer, src *bufio.Reader, pending int64) error {
	if err := copyN(dst, src, pending); err != nil {
		return err
	}
	crlf, err := src.ReadSlice('\n')
	if err != nil {
		return chunkErr(err)
	}
	if !bytes.Equal(crlf, []byte("\r\n")) && !bytes.Equal(crlf, []byte("\n")) {
		return errBadChunk
	}
	if _, err := dst.Write(crlf); err != nil {
		return err
	}
	return copyChunked(dst, src)
}
