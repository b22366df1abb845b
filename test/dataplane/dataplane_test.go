//go:build linux

// Package dataplane tests the proxy binary with transparent interception for real: network namespaces joined by a veth
// pair, the redirect rules proxy-init installs (installed with its library, internal/redirect), and the proxy running
// as its own UID inside the workload's
// namespace. It needs root; it skips otherwise (and fails under CI=true when a tool is missing).
package dataplane

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/redirect"
)

// Addresses inside the namespaces this test creates.
const (
	podIP      = "10.250.0.1"
	peerIP     = "10.250.0.2"
	clusterIP  = "10.96.0.10"
	podIP6     = "fd00:250::1"
	peerIP6    = "fd00:250::2"
	clusterIP6 = "fd00:96::10"
	proxyUID   = 2102
)

func TestMain(m *testing.M) {
	if mode := os.Getenv("TRELLIS_DATAPLANE_HELPER"); mode != "" {
		os.Exit(helper(mode, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

// helper runs one of the small programs the test starts inside a namespace.
func helper(mode, arg string) int {
	switch mode {
	case "http-server": // arg: addr=name
		addr, name, _ := strings.Cut(arg, "=")
		err := http.ListenAndServe(addr, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			fmt.Fprintf(w, "%s saw %s %s from %s", name, r.Method, r.URL.Path, r.RemoteAddr)
		}))
		fmt.Fprintln(os.Stderr, err)
		return 1
	case "echo-server": // arg: addr
		ln, err := net.Listen("tcp", arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c) // echo until the client half-closes, then close
			}()
		}
	case "identity-server": // arg: directory written by writePKI
		return identityHelper(arg, meshPodB+":"+identityPort)
	case "tcp-client": // arg: addr; sends stdin, half-closes, prints the reply
		c, err := net.DialTimeout("tcp", arg, 5*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(c, os.Stdin); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		_ = c.(*net.TCPConn).CloseWrite()
		if _, err := io.Copy(os.Stdout, c); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	return 2
}

// need finds a tool; it skips the test when the tool is missing, or fails under CI=true.
func need(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required (make test-proxy installs it)", name)
	}
	t.Skipf("%s not found; skipping transparent-interception test", name)
	return ""
}

type env struct {
	t         *testing.T
	pod, peer string // namespace names
	self      string // this test binary
}

func (e *env) run(args ...string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// start runs a long-lived process in a namespace and stops it at cleanup; the channel closes when it exits.
func (e *env) start(ns string, stdout io.Writer, args ...string) (*exec.Cmd, <-chan struct{}) {
	e.t.Helper()
	return e.startEnv(ns, stdout, nil, args...)
}

// startEnv is start with extra environment variables.
func (e *env) startEnv(ns string, stdout io.Writer, extraEnv []string, args ...string) (*exec.Cmd, <-chan struct{}) {
	e.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, stdout
	cmd.Env = append(os.Environ(), extraEnv...)
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return cmd, done
}

func (e *env) startHelper(ns, mode, arg string) {
	e.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, e.self, arg)
	cmd.Env = append(os.Environ(), "TRELLIS_DATAPLANE_HELPER="+mode)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
}

// TestTransparentInterception runs the proxy binary as a sidecar would: a workload namespace ("pod") with the redirect
// rules, joined by a veth pair to a peer namespace holding the service's endpoint. It checks outbound HTTP through a
// cluster IP, outbound TCP to an unknown destination with half-close, inbound HTTP to the workload, that a direct
// connection to the proxy's port is refused as a loop, and that the proxy's metrics saw each hop.
func TestTransparentInterception(t *testing.T) {
	self, dir, proxyBin := setupRoot(t, "trellis-dataplane-")

	suffix := fmt.Sprintf("%d%03d", os.Getpid()%10000, rand.IntN(1000))
	e := &env{t: t, pod: "tdp-pod-" + suffix, peer: "tdp-peer-" + suffix, self: self}
	vethPod, vethPeer := "tdpa"+suffix, "tdpb"+suffix
	e.run("ip", "netns", "add", e.pod)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", e.pod).Run() })
	e.run("ip", "netns", "add", e.peer)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", e.peer).Run() })
	e.run("ip", "link", "add", vethPod, "netns", e.pod, "type", "veth", "peer", "name", vethPeer, "netns", e.peer)
	for _, c := range [][]string{
		{e.pod, "ip", "link", "set", "lo", "up"},
		{e.pod, "ip", "addr", "add", podIP + "/24", "dev", vethPod},
		{e.pod, "ip", "link", "set", vethPod, "up"},
		{e.pod, "ip", "route", "add", "default", "via", peerIP},
		{e.pod, "ip", "addr", "add", podIP6 + "/64", "dev", vethPod, "nodad"},
		{e.pod, "ip", "-6", "route", "add", "default", "via", peerIP6},
		{e.peer, "ip", "addr", "add", peerIP6 + "/64", "dev", vethPeer, "nodad"},
		{e.peer, "ip", "link", "set", "lo", "up"},
		{e.peer, "ip", "addr", "add", peerIP + "/24", "dev", vethPeer},
		{e.peer, "ip", "link", "set", vethPeer, "up"},
	} {
		e.run(append([]string{"ip", "netns", "exec"}, c...)...)
	}

	// The service's endpoint and an unknown TCP echo server live in the peer namespace; the workload's own app in the
	// pod namespace.
	e.startHelper(e.peer, "http-server", peerIP+":8080=endpoint")
	e.startHelper(e.peer, "echo-server", ":7070")
	e.startHelper(e.pod, "http-server", "127.0.0.1:9090=app")
	// Before any redirect: wait until both address families reach the peer (IPv6 neighbour discovery and duplicate
	// address detection on fresh links take a moment), so the proxy's first connections are not lost to the link
	// coming up.
	for _, dst := range []string{peerIP + ":7070", "[" + peerIP6 + "]:7070"} {
		waitFor(t, func() bool {
			cmd := exec.Command("ip", "netns", "exec", e.pod, self, dst)
			cmd.Env = append(os.Environ(), "TRELLIS_DATAPLANE_HELPER=tcp-client")
			cmd.Stdin = strings.NewReader("probe")
			out, err := cmd.Output()
			return err == nil && string(out) == "probe"
		})
	}
	installRedirect(t, e.pod)

	cfgDir := filepath.Join(dir, "config")
	_ = os.Mkdir(cfgDir, 0o755)
	doc := fmt.Sprintf(`{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "dp-1",
	  "services": [{"name": "web", "namespace": "shop", "clusterIPs": [%q, %q], "port": 80,
	    "backends": [{"name": "web", "endpoints": [{"address": "%s:8080"}]}]}]}`, clusterIP, clusterIP6, peerIP)
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	proxy, exited := e.start(e.pod, logs, "setpriv", fmt.Sprintf("--reuid=%d", proxyUID), fmt.Sprintf("--regid=%d", proxyUID),
		"--clear-groups", proxyBin, "--config-dir="+cfgDir, "--log-level=debug", "--detect-timeout=200ms")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("proxy logs:\n%s", logs.String())
		}
	})
	curl := func(ns string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, "curl", "-sS",
			"--max-time", "10"}, args...)...).CombinedOutput()
		return string(out), err
	}
	waitFor(t, func() bool {
		out, err := curl(e.pod, "http://127.0.0.1:4191/ready")
		return err == nil && out == "ready\n"
	})
	waitFor(t, func() bool { _, err := curl(e.peer, "http://"+peerIP+":8080/"); return err == nil })

	t.Run("outbound HTTP through the cluster IP", func(t *testing.T) {
		out, err := curl(e.pod, "http://"+clusterIP+"/hello")
		if err != nil || !strings.HasPrefix(out, "endpoint saw GET /hello from "+podIP) {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("outbound HTTP through the IPv6 cluster IP", func(t *testing.T) {
		out, err := curl(e.pod, "http://["+clusterIP6+"]/six")
		if err != nil || !strings.HasPrefix(out, "endpoint saw GET /six from "+podIP) {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	for _, dst := range []string{peerIP + ":7070", "[" + peerIP6 + "]:7070"} {
		t.Run("outbound TCP to an unknown destination with half-close "+dst, func(t *testing.T) {
			cmd := exec.Command("ip", "netns", "exec", e.pod, self, dst)
			cmd.Env = append(os.Environ(), "TRELLIS_DATAPLANE_HELPER=tcp-client")
			cmd.Stdin = strings.NewReader("half-closed ping")
			out, err := cmd.CombinedOutput()
			if err != nil || string(out) != "half-closed ping" {
				t.Fatalf("got %q, %v", out, err)
			}
		})
	}
	t.Run("inbound HTTP to the workload", func(t *testing.T) {
		out, err := curl(e.peer, "http://"+podIP+":9090/in")
		// The app sees the proxy's loopback connection, which proves the hop.
		if err != nil || !strings.HasPrefix(out, "app saw GET /in from 127.0.0.1:") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("direct connection to the proxy port is refused as a loop", func(t *testing.T) {
		out, err := curl(e.pod, "http://127.0.0.1:4140/")
		if err == nil {
			t.Fatalf("loop answered: %q", out)
		}
	})
	t.Run("metrics prove the hops", func(t *testing.T) {
		out, err := curl(e.pod, "http://127.0.0.1:4191/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			`request_total{authority="web.shop.svc.cluster.local:80",client_id="",direction="outbound",dst_namespace="shop",dst_service="web",route="",server_id="",tls="false"} 2`,
			`request_total{authority="` + podIP + `:9090",client_id="",direction="inbound"`,
			`protocol_detect_total{direction="outbound",result="skipped"} 2`,
			`tcp_open_total{client_id="",direction="outbound",dst_namespace="",dst_service="",server_id="",tls="false"} 2`,
		} {
			if !strings.Contains(out, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
		if t.Failed() {
			t.Log(out)
		}
	})
	t.Run("SIGTERM drains and exits", func(t *testing.T) {
		if err := proxy.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			t.Fatal("proxy still running 20s after SIGTERM")
		}
		if !proxy.ProcessState.Success() {
			t.Errorf("proxy exited with %v", proxy.ProcessState)
		}
		if !strings.Contains(logs.String(), "Proxy stopped") {
			t.Errorf("no clean stop in the logs:\n%s", logs.String())
		}
	})
}

// installRedirect installs proxy-init's default rules (outbound TCP to 4140 except the proxy's UID and loopback,
// inbound TCP to 4143 except the proxy's ports) in the namespace ns.
func installRedirect(t *testing.T, ns string) {
	t.Helper()
	cfg := redirect.DefaultConfig()
	cfg.ProxyUID = proxyUID
	rs, err := redirect.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&redirect.Nftables{NetNS: filepath.Join("/var/run/netns", ns)}).Install(rs); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatal("timed out waiting for the namespaces to come up")
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// setupRoot skips (or, in CI, fails) a test that is not root, checks the commands the tests run, and builds the proxy
// binary into a new folder (prefix) that the proxy's UID can read. It returns this test binary, the folder and the
// proxy binary.
func setupRoot(t *testing.T, prefix string) (self, dir, proxyBin string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root; this test needs it")
		}
		t.Skip("needs root to create network namespaces and redirect rules")
	}
	for _, tool := range []string{"ip", "setpriv", "curl"} {
		need(t, tool)
	}
	goBin := need(t, "go")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o755)
	proxyBin = filepath.Join(dir, "proxy")
	build := exec.Command(goBin, "build", "-o", proxyBin, "github.com/trellis-mesh/trellis/cmd/proxy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the proxy: %v\n%s", err, out)
	}
	return self, dir, proxyBin
}
