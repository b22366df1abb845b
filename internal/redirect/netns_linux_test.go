package redirect_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trellis-mesh/trellis/proxy/origdst"
)

// Addresses inside the namespaces the tests create. The peer also holds an address in each ignored network.
const (
	podIP       = "10.231.0.1"
	peerIP      = "10.231.0.2"
	ignoredIP   = "10.231.1.2"
	ignoredNet  = "10.231.1.0/24"
	podIP6      = "fd00:231::1"
	peerIP6     = "fd00:231::2"
	ignoredIP6  = "fd00:231:1::2"
	ignoredNet6 = "fd00:231:1::/64"
)

// helperEnv makes the test binary dial the address it names, print the reply line and exit; the tests run it as
// another user inside the pod namespace.
const helperEnv = "TRELLIS_REDIRECT_TEST_DIAL"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		reply, err := dial(addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Print(reply)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// inCI reports whether the tests run in CI, where skipping a real test is a failure.
func inCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

// needRoot skips the test when not root (it fails in CI, which runs as root).
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if inCI() {
		t.Fatal("CI runs as root; this test needs it to create network namespaces")
	}
	t.Skip("skipping: needs root to create network namespaces and program the packet filter")
}

// needTool returns the path of a command; it skips the test when the command is missing (fails in CI).
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if inCI() {
		t.Fatalf("%s is required (make test-proxy-init installs it)", name)
	}
	t.Skipf("skipping: %s not found", name)
	return ""
}

// podNet is a "pod" namespace joined by a veth pair to a "peer" namespace, both with IPv4 and IPv6 addresses.
type podNet struct {
	t                 *testing.T
	pod, peer         string // namespace names
	podPath, peerPath string // their mount points
}

func newPodNet(t *testing.T) *podNet {
	t.Helper()
	needRoot(t)
	needTool(t, "ip")
	suffix := fmt.Sprintf("%d%03d", os.Getpid()%10000, rand.IntN(1000))
	n := &podNet{t: t, pod: "trd-pod-" + suffix, peer: "trd-peer-" + suffix}
	n.podPath, n.peerPath = filepath.Join("/var/run/netns", n.pod), filepath.Join("/var/run/netns", n.peer)
	for _, ns := range []string{n.pod, n.peer} {
		mustRun(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("deleting namespace %s: %v: %s", ns, err, out)
			}
		})
	}
	vethPod, vethPeer := "trda"+suffix, "trdb"+suffix
	mustRun(t, "ip", "link", "add", vethPod, "netns", n.pod, "type", "veth", "peer", "name", vethPeer, "netns", n.peer)
	for _, c := range [][]string{
		{n.pod, "ip", "link", "set", "lo", "up"},
		{n.pod, "ip", "addr", "add", podIP + "/24", "dev", vethPod},
		{n.pod, "ip", "addr", "add", podIP6 + "/64", "dev", vethPod, "nodad"},
		{n.pod, "ip", "link", "set", vethPod, "up"},
		{n.pod, "ip", "route", "add", "default", "via", peerIP},
		{n.pod, "ip", "-6", "route", "add", "default", "via", peerIP6},
		{n.peer, "ip", "link", "set", "lo", "up"},
		{n.peer, "ip", "addr", "add", peerIP + "/24", "dev", vethPeer},
		{n.peer, "ip", "addr", "add", ignoredIP + "/24", "dev", vethPeer},
		{n.peer, "ip", "addr", "add", peerIP6 + "/64", "dev", vethPeer, "nodad"},
		{n.peer, "ip", "addr", "add", ignoredIP6 + "/64", "dev", vethPeer, "nodad"},
		{n.peer, "ip", "link", "set", vethPeer, "up"},
	} {
		mustRun(t, append([]string{"ip", "netns", "exec"}, c...)...)
	}
	return n
}

// nsRun runs a command inside namespace ns and returns its output.
func (n *podNet) nsRun(ns string, args ...string) (string, error) {
	return run(append([]string{"ip", "netns", "exec", ns}, args...)...)
}

func run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// inNetNS runs fn on a thread that has joined the namespace mounted at path. Sockets fn creates stay in that
// namespace. The thread is never unlocked, so the runtime discards it (and its namespace) when fn returns.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// listen starts a TCP listener on port (all addresses, IPv4 and IPv6) in a namespace. It answers every connection
// with one line, "<name> <original destination>", and closes it; the listener stops at cleanup.
func listen(t *testing.T, nsPath string, port int, name string) {
	t.Helper()
	var ln net.Listener
	err := inNetNS(nsPath, func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
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
			dst := "-"
			if ap, err := origdst.Get(c); err == nil {
				dst = ap.String()
			}
			if c.SetWriteDeadline(time.Now().Add(5*time.Second)) == nil {
				fmt.Fprintf(c, "%s %s\n", name, dst)
			}
			c.Close()
		}
	})
}

// dial connects to addr from the calling thread's namespace and returns the line the listener answered.
func dial(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return line, nil
}

// dialFrom dials addr from inside a namespace.
func dialFrom(nsPath, addr string) (string, error) {
	var reply string
	err := inNetNS(nsPath, func() (err error) {
		reply, err = dial(addr)
		return err
	})
	return reply, err
}

// waitFor polls ok for up to 20 seconds.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// userBinary copies the test binary where another user can run it, and returns the copy's path.
func userBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "trellis-redirect-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "redirect.test")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// dialAs dials addr from the pod namespace in a child process running as uid.
func (n *podNet) dialAs(bin string, uid int, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.pod, "setpriv", fmt.Sprintf("--reuid=%d", uid),
		fmt.Sprintf("--regid=%d", uid), "--clear-groups", bin, "-test.run=^$")
	// Under -race the child would otherwise wait a second before exiting.
	cmd.Env = append(os.Environ(), helperEnv+"="+addr, "GORACE=atexit_sleep_ms=0")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("dialling %s as uid %d: %w: %s", addr, uid, err, stderr.String())
	}
	return string(out), nil
}
