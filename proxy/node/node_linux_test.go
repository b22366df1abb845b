//go:build linux

package node

import (
	"context"
	"crypto"
	"encoding/json"
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

	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	"github.com/trellis-mesh/trellis/internal/redirect"
	"github.com/trellis-mesh/trellis/internal/wellknown"
	"github.com/trellis-mesh/trellis/proxy/node/netns"
)

// Identities and the service address of the node-mode test (inside its namespaces only).
const (
	serviceIP = "10.96.252.10"
	idA       = "spiffe://cluster.local/ns/shop/sa/client"
	idB       = "spiffe://cluster.local/ns/billing/sa/server"
)

// testNetworks returns the addresses of the two pods and of the node's side of their links: 10.252.<n>.0/24 and
// 10.252.<n+1>.0/24 with n drawn at random, because the node proxy searches every namespace on the machine for a pod's
// address, and a concurrent run of this test must not hold the same ones.
func testNetworks() (podAIP, nodeSideA, podBIP, nodeSideB string) {
	n := 2 * rand.IntN(127)
	return fmt.Sprintf("10.252.%d.2", n), fmt.Sprintf("10.252.%d.1", n), fmt.Sprintf("10.252.%d.2", n+1), fmt.Sprintf("10.252.%d.1", n+1)
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root; this test needs it")
		}
		t.Skip("needs root to create network namespaces and redirect rules")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required", tool)
			}
			t.Skipf("%s not found", tool)
		}
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// addNetNS creates a named network namespace, removed at cleanup, and opens it.
func addNetNS(t *testing.T, name string) *netns.Handle {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	h, err := netns.Open(filepath.Join(netns.DefaultDir, name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// serveApp runs an HTTP application on port inside a pod's namespace; each answer names the app, the port and the
// client's address.
func serveApp(t *testing.T, h *netns.Handle, name string, port int) {
	t.Helper()
	ln, err := h.Listen(context.Background(), fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s:%d saw %s %s from %s", name, port, r.Method, r.URL.Path, r.RemoteAddr)
	}), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
}

// serveEcho runs a TCP echo server on port inside a pod's namespace: it echoes until the client half-closes.
func serveEcho(t *testing.T, h *netns.Handle, port int) {
	t.Helper()
	ln, err := h.Listen(context.Background(), fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
}

// clientIn returns an HTTP client whose connections are created in h's namespace.
func clientIn(t *testing.T, h *netns.Handle) *http.Client {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return h.Dial(ctx, addr, 3*time.Second)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func waitUntil(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		if ok() {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// TestNodeProxyServesPodsInTheirNamespaces runs the node proxy (the test binary again, inside a "node" namespace,
// with the identity service beside it) for two "pods": network namespaces routed through the node's, each with
// proxy-init's redirect and no proxy of its own. A client in pod A calls a service of pod B: the node proxy's
// listener inside pod A takes the redirected connection, opens mesh TLS with A's certificate from the node's
// namespace, its listener inside pod B terminates it with B's certificate and forwards to B's application from
// inside B. The checks: the answer (HTTP, and opaque TCP with half-close), the identities in the metrics of each pod,
// authorization by B's identity-aware
// policy (a plaintext client from the node is refused, the probe port is open), the await the injector adds
// passing in pod A, /pods, a pod leaving (its listeners close) and coming back, and a clean stop on SIGTERM.
func TestNodeProxyServesPodsInTheirNamespaces(t *testing.T) {
	need(t, "ip", "nsenter")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sfx := fmt.Sprintf("%d%03d", os.Getpid()%10000, rand.IntN(1000))
	podAIP, nodeSideA, podBIP, nodeSideB := testNetworks()
	node := addNetNS(t, "tnp-node-"+sfx)
	podA := addNetNS(t, "tnp-a-"+sfx)
	podB := addNetNS(t, "tnp-b-"+sfx)
	for _, l := range []struct {
		pod, podIP, nodeIP, veth string
	}{{"tnp-a-" + sfx, podAIP, nodeSideA, "tnpa" + sfx}, {"tnp-b-" + sfx, podBIP, nodeSideB, "tnpb" + sfx}} {
		run(t, "ip", "link", "add", l.veth, "netns", l.pod, "type", "veth", "peer", "name", l.veth+"n", "netns", "tnp-node-"+sfx)
		for _, c := range [][]string{
			{l.pod, "ip", "link", "set", "lo", "up"},
			{l.pod, "ip", "addr", "add", l.podIP + "/24", "dev", l.veth},
			{l.pod, "ip", "link", "set", l.veth, "up"},
			{l.pod, "ip", "route", "add", "default", "via", l.nodeIP},
			{"tnp-node-" + sfx, "ip", "addr", "add", l.nodeIP + "/24", "dev", l.veth + "n"},
			{"tnp-node-" + sfx, "ip", "link", "set", l.veth + "n", "up"},
		} {
			run(t, append([]string{"ip", "netns", "exec"}, c...)...)
		}
	}
	run(t, "ip", "netns", "exec", "tnp-node-"+sfx, "ip", "link", "set", "lo", "up")
	rs, err := redirect.Plan(redirect.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []*netns.Handle{podA, podB} {
		if err := (&redirect.Nftables{NetNS: h.Path()}).Install(rs); err != nil {
			t.Fatal(err)
		}
	}
	serveApp(t, podB, "b", 8080)
	serveApp(t, podB, "b", 8081)
	serveEcho(t, podB, 7070)

	dir := t.TempDir()
	writeHelperFiles(t, dir, podBIP)
	a := servedPod("shop", "a", "client", podAIP, nil)
	b := servedPod("billing", "b", "server", podBIP, map[string]string{wellknown.AnnotationInboundProbePorts: "8081"})
	writePods := func(pods ...Pod) {
		data, _ := json.Marshal(pods)
		if err := os.WriteFile(filepath.Join(dir, "pods.json.tmp"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "pods.json.tmp"), filepath.Join(dir, "pods.json")); err != nil {
			t.Fatal(err)
		}
	}
	writePods(a, b)

	logs := &lockedBuffer{}
	cmd := exec.Command("nsenter", "--net="+node.Path(), self, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("node proxy logs:\n%s", logs.String())
		}
	})

	admin := clientIn(t, node)
	pods := func() map[string]podStatus {
		_, body, err := get(admin, "http://"+helperAdmin+"/pods")
		out := map[string]podStatus{}
		var list []podStatus
		if err == nil && json.Unmarshal([]byte(body), &list) == nil {
			for _, p := range list {
				out[p.Pod] = p
			}
		}
		return out
	}
	serving := func(keys ...string) func() bool {
		return func() bool {
			ps := pods()
			for _, k := range keys {
				if ps[k].State != "serving" {
					return false
				}
			}
			return true
		}
	}
	waitUntil(t, "the node proxy to serve both pods", 30*time.Second, serving("shop/a", "billing/b"))
	if ps := pods(); ps["shop/a"].Identity != idA || ps["billing/b"].Identity != idB || ps["billing/b"].NetNS != podB.Path() {
		t.Fatalf("/pods: %+v", ps)
	}
	if code, _, _ := get(admin, "http://"+helperAdmin+"/ready"); code != 200 {
		t.Fatalf("/ready = %d", code)
	}

	// What the injector's trellis-await container checks, from inside pod A.
	if err := podA.Do(func() error {
		return redirect.AwaitListeners(context.Background(), []string{"127.0.0.1:4140", "127.0.0.1:4143"}, 5*time.Second, 50*time.Millisecond, nil)
	}); err != nil {
		t.Fatalf("await in pod A: %v", err)
	}

	fromA := clientIn(t, podA)
	const requests = 20
	for i := range requests {
		code, body, err := get(fromA, fmt.Sprintf("http://%s/hello/%d", serviceIP, i))
		if err != nil || code != 200 || !strings.HasPrefix(body, fmt.Sprintf("b:8080 saw GET /hello/%d from 127.0.0.1:", i)) {
			t.Fatalf("request %d from pod A: %d %q %v", i, code, body, err)
		}
	}

	// Opaque TCP with half-close, over mesh TLS (trellis/1) between the two pods' identities.
	c, err := podA.Dial(context.Background(), serviceIP+":7070", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "half-closed ping"); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	if echoed, err := io.ReadAll(c); err != nil || string(echoed) != "half-closed ping" {
		t.Fatalf("TCP echo from pod A: %q, %v", echoed, err)
	}
	c.Close()

	fromNode := clientIn(t, node)
	if code, body, err := get(fromNode, "http://"+podBIP+":8080/plain"); err != nil || code != 403 {
		t.Errorf("plaintext client from the node to pod B: %d %q %v, want 403 (all-authenticated)", code, body, err)
	}
	if code, body, err := get(fromNode, "http://"+podBIP+":8081/probe"); err != nil || code != 200 || !strings.HasPrefix(body, "b:8081 saw GET /probe") {
		t.Errorf("plaintext client to pod B's probe port: %d %q %v, want 200", code, body, err)
	}

	_, text, err := get(admin, "http://"+helperAdmin+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		metric string
		labels map[string]string
		min    float64
	}{
		{"request_total", map[string]string{"workload_pod": "a", "workload_namespace": "shop", "direction": "outbound",
			"tls": "true", "server_id": idB, "dst_service": "server"}, requests},
		{"request_total", map[string]string{"workload_pod": "b", "workload_namespace": "billing", "direction": "inbound",
			"tls": "true", "client_id": idA}, requests},
		{"inbound_http_authz_deny_total", map[string]string{"workload_pod": "b", "tls": "false", "rule": "default:all-authenticated"}, 1},
		{"inbound_http_authz_allow_total", map[string]string{"workload_pod": "b", "rule": "probe"}, 1},
		{"mtls_handshake_total", map[string]string{"workload_pod": "b", "direction": "inbound", "result": "success"}, 1},
		{"tcp_open_total", map[string]string{"workload_pod": "b", "direction": "inbound", "tls": "true", "client_id": idA}, 1},
		{"tcp_open_total", map[string]string{"workload_pod": "a", "direction": "outbound", "tls": "true", "dst_service": "echo", "server_id": idB}, 1},
		{"identity_cert_expiration_timestamp_seconds", map[string]string{"workload_identity": idA}, 1},
		{"identity_cert_expiration_timestamp_seconds", map[string]string{"workload_identity": idB}, 1},
		{"config_info", map[string]string{"version": "node-1"}, 1},
	} {
		if got := metricSum(text, want.metric, want.labels); got < want.min {
			t.Errorf("%s%v = %v, want at least %v", want.metric, want.labels, got, want.min)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", text)
	}

	// Pod B leaves: its listeners close, so its redirected port refuses.
	writePods(a)
	waitUntil(t, "pod B to be dropped", 10*time.Second, func() bool { _, ok := pods()["billing/b"]; return !ok })
	waitUntil(t, "pod B's listeners to close", 10*time.Second, func() bool {
		c, err := node.Dial(context.Background(), podBIP+":8080", time.Second)
		if err == nil {
			c.Close()
			return false
		}
		return strings.Contains(err.Error(), "connection refused")
	})
	// And comes back.
	writePods(a, b)
	waitUntil(t, "the node proxy to serve pod B again", 30*time.Second, serving("billing/b"))
	if code, body, err := get(fromA, "http://"+serviceIP+"/again"); err != nil || code != 200 || !strings.HasPrefix(body, "b:8080 saw GET /again") {
		t.Fatalf("after pod B came back: %d %q %v", code, body, err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the node proxy still runs 20s after SIGTERM")
	}
	if !cmd.ProcessState.Success() || !strings.Contains(logs.String(), "Node proxy stopped") {
		t.Errorf("no clean stop: %v", cmd.ProcessState)
	}
}

// writeHelperFiles writes the helper's PKI, token and configuration into dir.
func writeHelperFiles(t *testing.T, dir, podBIP string) {
	t.Helper()
	root := identitytest.NewRoot(t, "node test trust anchor")
	issuer := root.NewIntermediate(t, "node test issuer")
	serving := root.ServingCert(t, identityDNSName)
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	issuerData := issuer.IssuerSecretData(t)
	write("issuer.crt", issuerData["tls.crt"])
	write("issuer.key", issuerData["tls.key"])
	var servingPEM []byte
	for _, der := range serving.Certificate {
		servingPEM = append(servingPEM, identitytest.PEMCerts(mustParseCert(t, der))...)
	}
	write("serving.crt", servingPEM)
	write("serving.key", identitytest.PEMKey(t, serving.PrivateKey.(crypto.Signer)))
	write("ca.crt", identitytest.PEMCerts(root.Cert))
	write("token", []byte(nodeProxyToken))
	if err := os.Mkdir(filepath.Join(dir, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "node-1",
	  "inbound": {"defaultPolicy": "all-authenticated"},
	  "services": [{"name": "server", "namespace": "billing", "clusterIPs": [%q], "port": 80,
	    "backends": [{"name": "server", "endpoints": [{"address": "%s:8080", "identity": %q}]}]},
	   {"name": "echo", "namespace": "billing", "clusterIPs": [%q], "port": 7070, "protocol": "opaque",
	    "backends": [{"name": "echo", "endpoints": [{"address": "%s:7070", "identity": %q}]}]}]}`,
		serviceIP, podBIP, idB, serviceIP, podBIP, idB)
	write("config/config.json", []byte(doc))
}
