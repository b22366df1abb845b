package tcp

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type counter struct{ n atomic.Int64 }

func (c *counter) Add(v float64) { c.n.Add(int64(v)) }

// pair returns both ends of a loopback TCP connection.
func pair(t testing.TB) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// forward wires client ⇄ [proxy] ⇄ server and returns the ends the test drives.
func forward(t *testing.T, o Options) (client, server net.Conn, done chan error) {
	client, pc := pair(t)
	ps, server := pair(t)
	done = make(chan error, 1)
	go func() {
		_, _, err := Forward(pc, ps, o)
		done <- err
	}()
	return client, server, done
}

// TestHalfClose checks the behaviour of a client that sends a request, shuts its write side, and then reads the whole
// reply: the server sees EOF after the request and can still answer.
func TestHalfClose(t *testing.T) {
	var sent, recv counter
	client, server, done := forward(t, Options{Sent: &sent, Received: &recv, IdleTimeout: time.Minute})
	req := bytes.Repeat([]byte("q"), 100_000)
	go func() {
		_, _ = client.Write(req)
		_ = client.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, req) {
		t.Fatalf("server read %d bytes, %v", len(got), err)
	}
	reply := bytes.Repeat([]byte("r"), 70_000)
	_, _ = server.Write(reply)
	_ = server.(*net.TCPConn).CloseWrite()
	back, err := io.ReadAll(client)
	if err != nil || !bytes.Equal(back, reply) {
		t.Fatalf("client read %d bytes, %v", len(back), err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if sent.n.Load() != int64(len(req)) || recv.n.Load() != int64(len(reply)) {
		t.Errorf("counted %d sent, %d received", sent.n.Load(), recv.n.Load())
	}
}

// TestIdleTimeout checks that a connection with no traffic is closed, while one that keeps moving bytes in only one
// direction stays open.
func TestIdleTimeout(t *testing.T) {
	client, server, done := forward(t, Options{IdleTimeout: 500 * time.Millisecond})
	for range 30 { // one-way traffic for 1.5s: longer than the idle timeout
		_, _ = server.Write([]byte("tick"))
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("closed while busy: %v", err)
	default:
	}
	buf := make([]byte, 64)
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := client.Read(buf); err != nil {
			break
		}
	}
	if err := <-done; !errors.Is(err, ErrIdle) {
		t.Fatalf("Forward returned %v, want ErrIdle", err)
	}
}

// TestResetPropagates checks that an abrupt close of one side ends both.
func TestResetPropagates(t *testing.T) {
	client, server, done := forward(t, Options{})
	_ = server.(*net.TCPConn).SetLinger(0)
	server.Close()
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(client); err != nil && errors.Is(err, errors.ErrUnsupported) {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Logf("Forward returned %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Forward did not return after the server closed")
	}
}

func TestPrefixReplayed(t *testing.T) {
	client, pc := pair(t)
	ps, server := pair(t)
	go func() {
		_, _, _ = Forward(pc, ps, Options{ClientReader: io.MultiReader(bytes.NewReader([]byte("peeked-")), pc)})
	}()
	_, _ = client.Write([]byte("rest"))
	_ = client.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(server)
	if string(got) != "peeked-rest" {
		t.Fatalf("server got %q", got)
	}
	server.Close()
	_, _ = io.ReadAll(client)
}

// BenchmarkForward measures the copy loop: 64 KiB echoed through the forwarder per iteration.
func BenchmarkForward(b *testing.B) {
	client, pc := pair(b)
	ps, server := pair(b)
	go func() {
		_, _, _ = Forward(pc, ps, Options{IdleTimeout: time.Minute, Sent: &counter{}, Received: &counter{}})
	}()
	go func() { _, _ = io.Copy(server, server) }()
	msg := make([]byte, 64<<10)
	buf := make([]byte, len(msg))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		_, _ = client.Write(msg)
		_, _ = io.ReadFull(client, buf)
	}
	client.Close()
	server.Close()
}
