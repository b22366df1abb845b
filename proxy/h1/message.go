package h1

import (
	"bufio"
	"bytes"
	"errors"
	"strconv"
	"unsafe"
)

// MaxHeaderBytes bounds a request or response head (start line and header fields).
const MaxHeaderBytes = 64 << 10

// span is a [start, end) range in a message's buffer.
type span struct{ start, end int32 }

type header struct {
	name, value span
	hop         bool // hop-by-hop: not forwarded
}

// message is a parsed request or response head. Its buffer and header slice are reused across messages.
type message struct {
	buf     []byte
	first   [3]span // request: method, target, version; response: version, code, reason
	headers []header

	contentLength int64 // -1 when absent
	chunked       bool
	otherCoding   bool // a transfer coding other than a final chunked
	connClose     bool
	keepAlive     bool
	connUpgrade   bool
	upgrade       bool // an Upgrade header is present
	expect100     bool
	teTrailers    bool
	http10        bool
	status        int
	hostIdx       int // index in headers, -1 when absent
	connTokens    []span
}

var (
	errHeaderTooLarge = errors.New("h1: message head too large")
	errMalformed      = errors.New("h1: malformed message")
	errBadLength      = errors.New("h1: invalid or conflicting Content-Length")
)

func (m *message) reset() {
	m.buf = m.buf[:0]
	m.headers = m.headers[:0]
	m.connTokens = m.connTokens[:0]
	m.contentLength = -1
	m.chunked, m.otherCoding, m.connClose, m.keepAlive, m.connUpgrade = false, false, false, false, false
	m.upgrade, m.expect100, m.teTrailers, m.http10 = false, false, false, false
	m.status = 0
	m.hostIdx = -1
}

func (m *message) str(s span) string {
	if s.end <= s.start {
		return ""
	}
	return unsafe.String(&m.buf[s.start], int(s.end-s.start))
}

func (m *message) bytes(s span) []byte { return m.buf[s.start:s.end] }

// readLine appends the next line (without CR LF) to m.buf and returns its span.
func (m *message) readLine(r *bufio.Reader) (span, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return span{}, errHeaderTooLarge
		}
		return span{}, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(m.buf)+len(line) > MaxHeaderBytes {
		return span{}, errHeaderTooLarge
	}
	start := int32(len(m.buf))
	m.buf = append(m.buf, line...)
	return span{start, int32(len(m.buf))}, nil
}

// readHead reads a start line and header fields. request selects request-line parsing.
func (m *message) readHead(r *bufio.Reader, request bool) error {
	m.reset()
	first, err := m.readLine(r)
	if err != nil {
		return err
	}
	if first.end == first.start && request {
		// RFC 9112 §2.2: ignore at least one empty line before a request line.
		if first, err = m.readLine(r); err != nil {
			return err
		}
	}
	if err := m.parseFirst(first, request); err != nil {
		return err
	}
	for {
		line, err := m.readLine(r)
		if err != nil {
			return err
		}
		if line.end == line.start {
			return m.interpret(request)
		}
		if err := m.parseField(line); err != nil {
			return err
		}
	}
}

func (m *message) parseFirst(s span, request bool) error {
	b := m.bytes(s)
	i := bytes.IndexByte(b, ' ')
	if i <= 0 {
		return errMalformed
	}
	j := bytes.IndexByte(b[i+1:], ' ')
	if request {
		if j <= 0 {
			return errMalformed
		}
		j += i + 1
		m.first = [3]span{{s.start, s.start + int32(i)}, {s.start + int32(i+1), s.start + int32(j)},
			{s.start + int32(j+1), s.end}}
		switch m.str(m.first[2]) {
		case "HTTP/1.1":
		case "HTTP/1.0":
			m.http10 = true
		default:
			return errMalformed
		}
		if !isToken(m.bytes(m.first[0])) {
			return errMalformed
		}
		return nil
	}
	end := len(b)
	if j >= 0 {
		end = i + 1 + j
	}
	m.first = [3]span{{s.start, s.start + int32(i)}, {s.start + int32(i+1), s.start + int32(end)}, {}}
	if end < len(b) {
		m.first[2] = span{s.start + int32(end+1), s.end}
	}
	switch m.str(m.first[0]) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		m.http10 = true
	default:
		return errMalformed
	}
	code := m.bytes(m.first[1])
	if len(code) != 3 {
		return errMalformed
	}
	n, err := strconv.Atoi(m.str(m.first[1]))
	if err != nil || n < 100 {
		return errMalformed
	}
	m.status = n
	return nil
}

func (m *message) parseField(s span) error {
	b := m.bytes(s)
	colon := bytes.IndexByte(b, ':')
	if colon <= 0 || !isToken(b[:colon]) { // also refuses obs-fold and whitespace before the colon
		return errMalformed
	}
	v0, v1 := colon+1, len(b)
	for v0 < v1 && (b[v0] == ' ' || b[v0] == '\t') {
		v0++
	}
	for v1 > v0 && (b[v1-1] == ' ' || b[v1-1] == '\t') {
		v1--
	}
	for _, c := range b[v0:v1] {
		if c == 0 || c == '\r' || c == '\n' {
			return errMalformed
		}
	}
	m.headers = append(m.headers, header{name: span{s.start, s.start + int32(colon)},
		value: span{s.start + int32(v0), s.start + int32(v1)}})
	return nil
}

// interpret derives framing and connection semantics from the header fields (RFC 9112 §6, §9; RFC 9110 §7.6.1).
func (m *message) interpret(request bool) error {
	for i := range m.headers {
		h := &m.headers[i]
		name, value := m.bytes(h.name), m.bytes(h.value)
		switch {
		case eqFold(name, "content-length"):
			n, ok := parseLength(value)
			if !ok || (m.contentLength >= 0 && m.contentLength != n) {
				return errBadLength
			}
			m.contentLength = n
		case eqFold(name, "transfer-encoding"):
			m.chunked = false
			forEachToken(value, func(t []byte) {
				if eqFold(t, "chunked") {
					m.chunked = true
				} else {
					m.chunked = false
					m.otherCoding = true
				}
			})
			if !m.chunked {
				m.otherCoding = true
			}
		case eqFold(name, "connection"):
			h.hop = true
			forEachToken(value, func(t []byte) {
				switch {
				case eqFold(t, "close"):
					m.connClose = true
				case eqFold(t, "keep-alive"):
					m.keepAlive = true
				case eqFold(t, "upgrade"):
					m.connUpgrade = true
				}
			})
			m.collectConnTokens(h.value)
		case eqFold(name, "keep-alive"), eqFold(name, "proxy-connection"):
			h.hop = true
		case eqFold(name, "te"):
			h.hop = true
			forEachToken(value, func(t []byte) {
				if len(t) >= 8 && eqFold(t[:8], "trailers") {
					m.teTrailers = true
				}
			})
		case eqFold(name, "upgrade"):
			h.hop = true
			m.upgrade = true
		case eqFold(name, "expect"):
			if request && eqFold(value, "100-continue") {
				m.expect100 = true
			}
		case eqFold(name, "host"):
			if request {
				if m.hostIdx >= 0 {
					return errMalformed
				}
				m.hostIdx = i
			}
		}
	}
	if m.chunked || m.otherCoding {
		// RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; such a message must not be reused after.
		if m.contentLength >= 0 {
			m.connClose = true
		}
		m.contentLength = -1
	}
	if request && (m.otherCoding || (!m.http10 && m.hostIdx < 0)) {
		return errMalformed
	}
	// Fields named by Connection are hop-by-hop too.
	for _, t := range m.connTokens {
		tok := m.bytes(t)
		for i := range m.headers {
			if eqFoldBytes(m.bytes(m.headers[i].name), tok) {
				m.headers[i].hop = true
			}
		}
	}
	return nil
}

func (m *message) collectConnTokens(v span) {
	b := m.bytes(v)
	i := 0
	for i < len(b) {
		for i < len(b) && (b[i] == ',' || b[i] == ' ' || b[i] == '\t') {
			i++
		}
		j := i
		for j < len(b) && b[j] != ',' {
			j++
		}
		k := j
		for k > i && (b[k-1] == ' ' || b[k-1] == '\t') {
			k--
		}
		if k > i {
			m.connTokens = append(m.connTokens, span{v.start + int32(i), v.start + int32(k)})
		}
		i = j
	}
}

// header returns the first value of the header named lowerName.
func (m *message) header(lowerName string) (string, bool) {
	for i := range m.headers {
		if eqFold(m.bytes(m.headers[i].name), lowerName) {
			return m.str(m.headers[i].value), true
		}
	}
	return "", false
}

func parseLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func forEachToken(b []byte, f func([]byte)) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, ',')
		t := b
		if i >= 0 {
			t, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		t = bytes.TrimSpace(t)
		if len(t) > 0 {
			f(t)
		}
	}
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// eqFold compares b with the lowercase ASCII string s, ignoring b's case.
func eqFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		if lower(b[i]) != s[i] {
			return false
		}
	}
	return true
}

func eqFoldBytes(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

var tokenTable = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = c > ' ' && c < 0x7f && !bytes.ContainsRune([]byte(`"(),/:;<=>?@[\]{}`), rune(c))
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenTable[c] {
			return false
		}
	}
	return true
}
