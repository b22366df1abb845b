package main

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/redirect"
)

// noBackend fails the test if the await mode touches the redirect.
func noBackend(t *testing.T) newBackendFunc {
	return func(redirect.Mode, string) (redirect.Backend, error) {
		t.Error("--await-node-proxy must not program the kernel")
		return nil, fmt.Errorf("no backend")
	}
}

// TestAwaitNodeProxy: --await-node-proxy exits 0 once both proxy ports accept on 127.0.0.1 (the outbound one only
// after a while), and 1 with a message naming the port that never did.
func TestAwaitNodeProxy(t *testing.T) {
	in, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	// A port that is free now and opened later.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	outAddr := probe.Addr().String()
	probe.Close()
	_, outPort, _ := net.SplitHostPort(outAddr)
	_, inPort, _ := net.SplitHostPort(in.Addr().String())
	go func() {
		time.Sleep(300 * time.Millisecond)
		if ln, err := net.Listen("tcp", outAddr); err == nil {
			t.Cleanup(func() { ln.Close() })
		}
	}()
	var stdout, stderr bytes.Buffer
	args := []string{"--await-node-proxy", "--await-timeout=10s", "--outbound-port=" + outPort, "--inbound-port=" + inPort}
	if code := run(args, env(nil), &stdout, &stderr, noBackend(t)); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "The node proxy serves this pod: 127.0.0.1:"+outPort+" and 127.0.0.1:"+inPort+" accept") {
		t.Fatalf("stdout %q", stdout.String())
	}

	stdout.Reset()
	stderr.Reset()
	// A port known to be closed.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closedPort, _ := net.SplitHostPort(closed.Addr().String())
	closed.Close()
	args = []string{"--await-node-proxy", "--await-timeout=500ms", "--outbound-port=" + closedPort, "--inbound-port=" + inPort}
	if code := run(args, env(nil), &stdout, &stderr, noBackend(t)); code != exitFailed {
		t.Fatalf("exit %d, want %d", code, exitFailed)
	}
	msg := stderr.String()
	if !strings.Contains(msg, "the node proxy does not serve this pod: nothing accepted on 127.0.0.1:"+closedPort) ||
		strings.Contains(msg, "127.0.0.1:"+inPort+" (") || !strings.Contains(msg, "within 500ms") {
		t.Fatalf("stderr %q", msg)
	}
	if code := run([]string{"--await-node-proxy", "--await-timeout=0s"}, env(nil), &stdout, &stderr, noBackend(t)); code != exitUsage {
		t.Fatalf("--await-timeout=0s: exit %d, want %d", code, exitUsage)
	}
}
