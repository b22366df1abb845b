// Package detect tells which protocol a client speaks by peeking at its first bytes, without consuming them.
package detect

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// Protocol is a detection result.
type Protocol uint8

// Detection results.
const (
	// Opaque is any byte stream that is not one of the protocols below.
	Opaque Protocol = iota
	// HTTP1 is an HTTP/1.0 or HTTP/1.1 request line.
	HTTP1
	// HTTP2 is the HTTP/2 connection preface (h2c with prior knowledge, as gRPC sends it).
	HTTP2
	// TLS is a TLS handshake record carrying a ClientHello.
	TLS
	// Timeout means the client sent too little to decide before the detect timeout (a server-speaks-first protocol);
	// the connection is forwarded as opaque TCP.
	Timeout
	// Closed means the client closed the connection or failed before sending enough to decide.
	Closed
)

var names = [...]string{Opaque: "opaque", HTTP1: "http1", HTTP2: "http2", TLS: "tls", Timeout: "timeout", Closed: "closed"}

// String returns the protocol's metric label value.
func (p Protocol) String() string { return names[p] }

// Preface is the HTTP/2 client connection preface.
const Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// MaxPeek bounds how many bytes detection reads ahead: an HTTP/1 request line longer than this is still detected as
// HTTP/1 by its method and left for the HTTP parser to refuse.
const MaxPeek = 2048

// Classify decides from the bytes seen so far. more is true when the answer needs more bytes (b is a prefix of a
// recognisable message); the result is then meaningless.
func Classify(b []byte) (p Protocol, more bool) {
	if len(b) == 0 {
		return Opaque, true
	}
	switch b[0] {
	case 0x16: // TLS handshake record: type, version (3, x), length (2 bytes), handshake type 1 = ClientHello.
		if len(b) < 6 {
			return Opaque, len(b) < 2 || b[1] == 3
		}
		if b[1] == 3 && b[5] == 1 {
			return TLS, false
		}
		return Opaque, false
	case 'P':
		n := min(len(b), len(Preface))
		if string(b[:n]) == Preface[:n] {
			if n == len(Preface) {
				return HTTP2, false
			}
			return Opaque, true
		}
	}
	return classifyHTTP1(b)
}

// maxMethod bounds the length of a request method.
const maxMethod = 24

func isMethodChar(c byte) bool { return c >= 'A' && c <= 'Z' || c == '-' || c == '_' }

func classifyHTTP1(b []byte) (Protocol, bool) {
	i := 0
	for ; i < len(b) && b[i] != ' '; i++ {
		if c := b[i]; i >= maxMethod || !isMethodChar(c) {
			return Opaque, false
		}
	}
	if i == len(b) {
		return Opaque, true
	}
	if i == 0 {
		return Opaque, false
	}
	end := bytes.IndexByte(b, '\n')
	switch {
	case end < 0 && len(b) < MaxPeek:
		return Opaque, true
	case end < 0:
		return HTTP1, false
	}
	line := bytes.TrimSuffix(b[:end], []byte{'\r'})
	if bytes.HasSuffix(line, []byte(" HTTP/1.1")) || bytes.HasSuffix(line, []byte(" HTTP/1.0")) {
		return HTTP1, false
	}
	return Opaque, false
}

// Peek reads from r until Classify decides, timeout passes or the client stops. The bytes stay buffered in r for the
// next reader. conn is the connection under r; Peek sets and then clears its read deadline. r must be at least MaxPeek
// bytes large.
func Peek(conn net.Conn, r *bufio.Reader, timeout time.Duration) (Protocol, error) {
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Closed, err
	}
	defer conn.SetReadDeadline(time.Time{}) //nolint:errcheck // a failure shows up on the next read
	want := 1
	for {
		b, err := r.Peek(want)
		if err == nil {
			b, _ = r.Peek(r.Buffered())
		}
		if len(b) > 0 {
			p, more := Classify(b)
			if !more {
				return p, nil
			}
			if len(b) >= MaxPeek {
				return Opaque, nil
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return Timeout, nil
			}
			if errors.Is(err, io.EOF) && len(b) > 0 {
				// The client half-closed after a prefix: what we have is all there will be.
				return Opaque, nil
			}
			return Closed, err
		}
		want = r.Buffered() + 1
	}
}
