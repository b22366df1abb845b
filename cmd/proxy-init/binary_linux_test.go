package main

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/wellknown"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// binary builds proxy-init as the image does (CGO_ENABLED=0, -trimpath) into a directory every user can read.
func binary(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("skipping: the go command is needed to build the binary")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "trellis-proxy-init-")
		if err != nil {
			buildErr = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "proxy-init")
		cmd := exec.Command(goBin, "build", "-trimpath", "-o", builtBin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// TestBinaryIsStatic checks that the image needs nothing but the binary: no dynamic loader, no shared libraries.
func TestBinaryIsStatic(t *testing.T) {
	f, err := elf.Open(binary(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %v program header: it is not static", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
}

func inCI() bool {
	v := os.Getenv("CI")
	return v != "" && v != "false" && v != "0"
}

func needRootAndTools(t *testing.T, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if inCI() {
			t.Fatal("CI runs as root; this test needs it to create network namespaces")
		}
		t.Skip("skipping: needs root to create network namespaces and program the packet filter")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if inCI() {
				t.Fatalf("%s is required (make test-proxy-init installs it)", tool)
			}
			t.Skipf("skipping: %s not found", tool)
		}
	}
}

// result is how a run of the binary ended.
type result struct {
	code           int
	stdout, stderr string
}

// inNS runs a command inside namespace ns with extra environment variables.
func inNS(t *testing.T, ns string, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	return r
}

// newNS creates an empty network namespace, deleted at cleanup.
func newNS(t *testing.T) string {
	t.Helper()
	ns := fmt.Sprintf("tpi-%d%03d", os.Getpid()%10000, rand.IntN(1000))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting namespace %s: %v: %s", ns, err, out)
		}
	})
	return ns
}

// TestBinary runs the static binary in a fresh namespace as an init container would.
func TestBinary(t *testing.T) {
	needRootAndTools(t, "ip", "nft", "setpriv")
	bin := binary(t)
	ns := newNS(t)
	nftList := func() result { return inNS(t, ns, nil, "nft", "list", "table", "inet", "trellis") }
	flags := []string{bin, "--skip-outbound-ports=5432,8000-8100", "--ignored-cidrs=10.96.0.0/12,fd00::/8"}
	env := []string{"TRELLIS_INIT_SKIP_INBOUND_PORTS=9000"}

	t.Run("dry run changes nothing", func(t *testing.T) {
		r := inNS(t, ns, env, append(flags, "--dry-run")...)
		if r.code != 0 || !strings.Contains(r.stdout, "tcp dport 9000 return") {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		if l := nftList(); l.code == 0 {
			t.Errorf("a dry run installed rules:\n%s", l.stdout)
		}
	})
	var first string
	t.Run("install prints what nft lists", func(t *testing.T) {
		r := inNS(t, ns, env, flags...)
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		first = nftList().stdout
		if want := "Installed the redirect rules (mode nftables):\n" + first; r.stdout != want {
			t.Errorf("printed:\n%s\nnft lists:\n%s", r.stdout, first)
		}
		for _, want := range []string{"tcp dport 9000 return", "tcp dport 8000-8100 return", "ip daddr 10.96.0.0/12 return",
			"ip6 daddr fd00::/8 return", fmt.Sprintf("meta skuid %d return", wellknown.ProxyUID)} {
			if !strings.Contains(first, want) {
				t.Errorf("nft list lacks %q:\n%s", want, first)
			}
		}
	})
	t.Run("list prints the installed rules", func(t *testing.T) {
		if r := inNS(t, ns, nil, bin, "--list"); r.code != 0 || r.stdout != first {
			t.Errorf("exit %d, stderr %q, printed:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, first)
		}
	})
	t.Run("installing again leaves one set of rules", func(t *testing.T) {
		if r := inNS(t, ns, env, flags...); r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if again := nftList().stdout; again != first {
			t.Errorf("second run:\n%s\nfirst run:\n%s", again, first)
		}
	})
	t.Run("without CAP_NET_ADMIN it fails clearly", func(t *testing.T) {
		uid := fmt.Sprint(wellknown.ProxyUID)
		r := inNS(t, ns, nil, "setpriv", "--reuid="+uid, "--regid="+uid, "--clear-groups", bin)
		if r.code != exitFailed || !strings.Contains(r.stderr, "proxy-init needs CAP_NET_ADMIN") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
		if again := nftList().stdout; again != first {
			t.Errorf("a failed run changed the rules:\n%s", again)
		}
	})
	t.Run("bad flags exit 2", func(t *testing.T) {
		r := inNS(t, ns, nil, bin, "--skip-inbound-ports=0")
		if r.code != exitUsage || !strings.Contains(r.stderr, `"0" is not a port`) {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
	t.Run("remove deletes the table", func(t *testing.T) {
		for range 2 {
			if r := inNS(t, ns, nil, bin, "--remove"); r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
		}
		if l := nftList(); l.code == 0 {
			t.Errorf("table still there:\n%s", l.stdout)
		}
		if r := inNS(t, ns, nil, bin, "--list"); r.code != exitFailed || !strings.Contains(r.stderr, "no Trellis redirect rules") {
			t.Errorf("--list after --remove: exit %d, stderr %q", r.code, r.stderr)
		}
	})
}

// TestBinaryIPTablesMode runs the fallback through the binary.
func TestBinaryIPTablesMode(t *testing.T) {
	needRootAndTools(t, "ip", "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore")
	bin := binary(t)
	ns := newNS(t)
	for range 2 {
		r := inNS(t, ns, nil, bin, "--mode=iptables", "--skip-outbound-ports=5432")
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	}
	saved := inNS(t, ns, nil, "iptables-save", "-t", "nat").stdout
	if n := strings.Count(saved, "-A OUTPUT -p tcp -j TRELLIS_OUTPUT\n"); n != 1 {
		t.Errorf("the OUTPUT jump appears %d times:\n%s", n, saved)
	}
	if !strings.Contains(saved, "-A TRELLIS_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN") &&
		!strings.Contains(saved, "-A TRELLIS_OUTPUT -p tcp --dport 5432 -j RETURN") {
		t.Errorf("skipped port missing:\n%s", saved)
	}
	if r := inNS(t, ns, nil, bin, "--mode=iptables", "--remove"); r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if saved := inNS(t, ns, nil, "ip6tables-save", "-t", "nat").stdout; strings.Contains(saved, "TRELLIS") {
		t.Errorf("rules left after --remove:\n%s", saved)
	}
}
