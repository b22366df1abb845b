package detect

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Protocol
		more bool
	}{
		{"empty", "", Opaque, true},
		{"http1 get", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTP1, false},
		{"http1.0", "GET / HTTP/1.0\r\n", HTTP1, false},
		{"http1 bare lf", "POST /x HTTP/1.1\n", HTTP1, false},
		{"webdav method", "PROPFIND /d HTTP/1.1\r\n", HTTP1, false},
		{"partial method", "GE", Opaque, true},
		{"partial line", "GET /index.html HTT", Opaque, true},
		{"http/2 over h1 line", "GET / HTTP/2.0\r\n", Opaque, false},
		{"lowercase method", "get / HTTP/1.1\r\n", Opaque, false},
		{"leading space", " GET / HTTP/1.1\r\n", Opaque, false},
		{"h2 preface", Preface + "\x00\x00", HTTP2, false},
		{"h2 preface prefix", Preface[:10], Opaque, true},
		{"P alone", "P", Opaque, true},
		{"tls client hello", "\x16\x03\x01\x02\x00\x01\x00", TLS, false},
		{"tls partial", "\x16\x03\x01", Opaque, true},
		{"tls server hello type", "\x16\x03\x03\x00\x10\x02", Opaque, false},
		{"not tls version", "\x16\x09", Opaque, false},
		{"mysql greeting-like", "\x4a\x00\x00\x00\x0a8.0", Opaque, false},
		{"redis", "*1\r\n$4\r\nPING\r\n", Opaque, false},
		{"ssh", "SSH-2.0-OpenSSH\r\n", Opaque, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, more := Classify([]byte(tt.in))
			if more != tt.more || (!more && p != tt.want) {
				t.Errorf("Classify(%q) = %v, more=%v; want %v, more=%v", tt.in, p, more, tt.want, tt.more)
			}
		})
	}
	long := "GET /" + strings.Repeat("a", MaxPeek) + " HTTP/1.1\r\n"
	if p, more := Classify([]byte(long[:MaxPeek])); p != HTTP1 || more {
		t.Errorf("long request line: %v more=%v", p, more)
	}
}

// TestPeek checks detection on real connections, including a client that sends its request line in pieces, a
// server-speaks-first client that sends nothing, and that the peeked bytes remain readable.
func TestPeek(t *testing.T) {
	tests := []struct {
		name   string
		chunks []string
		close  bool
		want   Protocol
	}{
		{"http1 in pieces", []string{"GE", "T / HT", "TP/1.1\r\n\r\n"}, false, HTTP1},
		{"h2", []string{Preface}, false, HTTP2},
		{"tls", []string{"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"}, false, TLS},
		{"opaque", []string{"hello"}, false, Opaque},
		{"silent client", nil, false, Timeout},
		{"prefix then silence", []string{"GET /"}, false, Timeout},
		{"closed", nil, true, Closed},
		{"prefix then half-close", []string{"GET /"}, true, Opaque},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client, server := tcpPair(t)
			go func() {
				for _, c := range tt.chunks {
					_, _ = client.Write([]byte(c))
					time.Sleep(5 * time.Millisecond)
				}
				if tt.close {
					_ = client.(*net.TCPConn).CloseWrite()
				}
			}()
			r := bufio.NewReaderSize(server, 4096)
			got, _ := Peek(server, r, 150*time.Millisecond)
			if got != tt.want {
				t.Fatalf("Peek = %v, want %v", got, tt.want)
			}
			sent := strings.Join(tt.chunks, "")
			if got != Timeout && got != Closed {
				buf := make([]byte, len(sent))
				if _, err := io.ReadFull(r, buf); err != nil || string(buf) != sent {
					t.Fatalf("peeked bytes not replayed: %q, %v", buf, err)
				}
			}
		})
	}
}

func tcpPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\n", Preface, "\x16\x03\x01\x00\x05\x01", "hello", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, more := Classify(b)
		if more {
			return
		}
		// A decision must not change when more bytes arrive.
		p2, more2 := Classify(append(append([]byte{}, b...), "\r\nxyz"...))
		if more2 || p2 != p {
			if p != HTTP1 || len(b) < MaxPeek {
				t.Fatalf("decision %v on %q changed to %v (more=%v) with more bytes", p, b, p2, more2)
			}
		}
	})
}

func BenchmarkClassify(b *testing.B) {
	for _, in := range []string{"GET /api/v1/items?id=1 HTTP/1.1\r\nHost: web\r\n", Preface, "\x16\x03\x01\x02\x00\x01"} {
		buf := []byte(in)
		b.Run(in[:3], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Classify(buf)
			}
		})
	}
}

func BenchmarkPeek(b *testing.B) {
	client, server := tcpPair(b)
	req := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	r := bufio.NewReaderSize(server, 4096)
	buf := make([]byte, len(req))
	b.ReportAllocs()
	for b.Loop() {
		_, _ = client.Write(req)
		if p, _ := Peek(server, r, time.Second); p != HTTP1 {
			b.Fatal(p)
		}
		_, _ = io.ReadFull(r, buf)
	}
}
