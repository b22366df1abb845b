package redirect_test

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/redirect"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// testConfig skips one inbound port, an outbound port and range, and one network of each family.
func testConfig() redirect.Config {
	cfg := redirect.DefaultConfig()
	cfg.SkipInboundPorts = []redirect.PortRange{redirect.Port(9000)}
	cfg.SkipOutboundPorts = []redirect.PortRange{redirect.Port(5432), {First: 6000, Last: 6100}}
	cfg.IgnoredCIDRs = []netip.Prefix{netip.MustParsePrefix(ignoredNet), netip.MustParsePrefix(ignoredNet6)}
	return cfg
}

func mustPlan(t *testing.T, cfg redirect.Config) redirect.Ruleset {
	t.Helper()
	rs, err := redirect.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// Where the listeners of startListeners are.
const (
	fromPod  = "pod"
	fromPeer = "peer"
)

// startListeners starts the proxy's three ports and two application ports in the pod, and three servers in the
// peer. Each answers with its name and the connection's original destination.
func startListeners(t *testing.T, n *podNet) {
	t.Helper()
	for port, name := range map[int]string{
		wellknown.OutboundPort: "outbound", wellknown.InboundPort: "inbound", wellknown.AdminPort: "admin",
		8080: "app", 9000: "app-skipped",
	} {
		listen(t, n.podPath, port, name)
	}
	for port, name := range map[int]string{7070: "peer", 5432: "peer-db", 6050: "peer-range"} {
		listen(t, n.peerPath, port, name)
	}
	for _, c := range []struct{ ns, addr string }{
		{n.podPath, peerIP + ":7070"}, {n.podPath, "[" + peerIP6 + "]:7070"},
		{n.peerPath, podIP + ":8080"}, {n.peerPath, "[" + podIP6 + "]:8080"},
	} {
		waitFor(t, "the namespaces to reach "+c.addr, func() bool {
			reply, err := dialFrom(c.ns, c.addr)
			return err == nil && reply != ""
		})
	}
}

// flow is one connection and where it must land.
type flow struct {
	name   string
	from   string // fromPod or fromPeer
	uid    int    // when set, dial from the pod in a child process running as this user
	to     string // the address dialled
	direct string // the listener reached without redirect rules
	// redirect is the listener reached with the rules when it differs from direct; the listener must also see
	// `to` as the connection's original destination.
	redirect string
}

func flows() []flow {
	p, p6 := peerIP, "["+peerIP6+"]"
	return []flow{
		{name: "outbound IPv4 goes to the outbound port", from: fromPod, to: p + ":7070", direct: "peer", redirect: "outbound"},
		{name: "outbound IPv6 goes to the outbound port", from: fromPod, to: p6 + ":7070", direct: "peer", redirect: "outbound"},
		{name: "skipped outbound port stays direct", from: fromPod, to: p + ":5432", direct: "peer-db"},
		{name: "skipped outbound range stays direct over IPv6", from: fromPod, to: p6 + ":6050", direct: "peer-range"},
		{name: "ignored IPv4 CIDR stays direct", from: fromPod, to: ignoredIP + ":7070", direct: "peer"},
		{name: "ignored IPv6 CIDR stays direct", from: fromPod, to: "[" + ignoredIP6 + "]:7070", direct: "peer"},
		{name: "IPv4 loopback stays direct", from: fromPod, to: "127.0.0.1:8080", direct: "app"},
		{name: "IPv6 loopback stays direct", from: fromPod, to: "[::1]:8080", direct: "app"},
		{name: "the pod's own address stays direct", from: fromPod, to: podIP + ":8080", direct: "app"},
		{name: "the proxy's UID is not redirected", from: fromPod, uid: wellknown.ProxyUID, to: p + ":7070", direct: "peer"},
		{name: "the proxy's UID is not redirected over IPv6", from: fromPod, uid: wellknown.ProxyUID, to: p6 + ":7070", direct: "peer"},
		{name: "another UID is redirected", from: fromPod, uid: wellknown.ProxyUID + 1, to: p + ":7070", direct: "peer", redirect: "outbound"},
		{name: "inbound IPv4 goes to the inbound port", from: fromPeer, to: podIP + ":8080", direct: "app", redirect: "inbound"},
		{name: "inbound IPv6 goes to the inbound port", from: fromPeer, to: "[" + podIP6 + "]:8080", direct: "app", redirect: "inbound"},
		{name: "skipped inbound port reaches the app", from: fromPeer, to: podIP + ":9000", direct: "app-skipped"},
		{name: "admin port is reached directly", from: fromPeer, to: podIP + ":4191", direct: "admin"},
		{name: "admin port is reached directly over IPv6", from: fromPeer, to: "[" + podIP6 + "]:4191", direct: "admin"},
		{name: "outbound port is not sent to the inbound port", from: fromPeer, to: podIP + ":4140", direct: "outbound"},
	}
}

// checkFlows dials every flow and checks where it lands, with or without the rules installed.
func checkFlows(t *testing.T, n *podNet, userBin string, installed bool) {
	for _, f := range flows() {
		t.Run(f.name, func(t *testing.T) {
			var reply string
			var err error
			switch {
			case f.uid != 0:
				reply, err = n.dialAs(userBin, f.uid, f.to)
			case f.from == fromPod:
				reply, err = dialFrom(n.podPath, f.to)
			default:
				reply, err = dialFrom(n.peerPath, f.to)
			}
			if err != nil {
				t.Fatal(err)
			}
			got, orig, _ := strings.Cut(strings.TrimSpace(reply), " ")
			want := f.direct
			if installed && f.redirect != "" {
				want = f.redirect
				if orig != f.to {
					t.Errorf("original destination %q, want %q", orig, f.to)
				}
			}
			if got != want {
				t.Errorf("landed on %q (reply %q), want %q", got, reply, want)
			}
		})
	}
}

// TestInterception sends real connections through the rules of each backend: before the rules, with them (installed
// twice) and after removing them.
func TestInterception(t *testing.T) {
	for _, mode := range []redirect.Mode{redirect.ModeNftables, redirect.ModeIPTables} {
		t.Run(string(mode), func(t *testing.T) {
			n := newPodNet(t)
			needTool(t, "setpriv")
			if mode == redirect.ModeIPTables {
				for _, tool := range []string{"nsenter", "iptables-restore", "ip6tables-restore"} {
					needTool(t, tool)
				}
			}
			userBin := userBinary(t)
			startListeners(t, n)
			b, err := redirect.NewBackend(mode, n.podPath)
			if err != nil {
				t.Fatal(err)
			}
			t.Run("without rules", func(t *testing.T) { checkFlows(t, n, userBin, false) })
			rs := mustPlan(t, testConfig())
			for range 2 {
				if err := b.Install(rs); err != nil {
					t.Fatal(err)
				}
			}
			t.Run("with rules", func(t *testing.T) { checkFlows(t, n, userBin, true) })
			if err := b.Remove(); err != nil {
				t.Fatal(err)
			}
			t.Run("after removal", func(t *testing.T) { checkFlows(t, n, userBin, false) })
			if dump, err := b.Dump(); !errors.Is(err, redirect.ErrNotInstalled) {
				t.Errorf("Dump after Remove: %v, %q; want ErrNotInstalled", err, dump)
			}
			if err := b.Remove(); err != nil {
				t.Errorf("second Remove: %v", err)
			}
		})
	}
}

// TestNftablesInstall checks the table nft sees, that installing twice or with another configuration leaves exactly
// one ruleset, that a failed install keeps the previous rules, and that removal leaves other tables alone.
func TestNftablesInstall(t *testing.T) {
	n := newPodNet(t)
	needTool(t, "nft")
	nftList := func() (string, error) { return n.nsRun(n.pod, "nft", "list", "table", "inet", redirect.TableName) }
	mustRun(t, "ip", "netns", "exec", n.pod, "nft", "add table inet other; add chain inet other c { type filter hook output priority 0; }; add rule inet other c counter")
	b := &redirect.Nftables{NetNS: n.podPath}
	rs := mustPlan(t, testConfig())
	if err := b.Install(rs); err != nil {
		t.Fatal(err)
	}
	first, err := nftList()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("nft lists the planned rules", func(t *testing.T) {
		if first != rs.String() {
			t.Errorf("nft list:\n%s\nplan:\n%s", first, rs)
		}
		for _, want := range []string{
			"type nat hook output priority -100; policy accept;", "type nat hook prerouting priority dstnat; policy accept;",
			"meta skuid 2102 return", `oifname "lo" return`, "ip daddr 10.231.1.0/24 return", "ip6 daddr fd00:231:1::/64 return",
			"tcp dport 6000-6100 return", "meta l4proto tcp redirect to :4140", "tcp dport 4191 return",
			"tcp dport 9000 return", "meta l4proto tcp redirect to :4143",
		} {
			if !strings.Contains(first, want) {
				t.Errorf("nft list lacks %q", want)
			}
		}
	})
	t.Run("List reads the plan back", func(t *testing.T) {
		got, err := b.List()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, rs) {
			t.Errorf("List:\n%s\nplan:\n%s", got, rs)
		}
		if dump, err := b.Dump(); err != nil || dump != first {
			t.Errorf("Dump: %v\n%s", err, dump)
		}
	})
	t.Run("installing again changes nothing", func(t *testing.T) {
		if err := b.Install(rs); err != nil {
			t.Fatal(err)
		}
		if again, err := nftList(); err != nil || again != first {
			t.Errorf("after a second install (%v):\n%s\nwant:\n%s", err, again, first)
		}
	})
	t.Run("another configuration replaces the rules", func(t *testing.T) {
		// Prefix lengths that need a mask, a single host, a whole family: nft must list them as Plan writes them.
		other := redirect.DefaultConfig()
		other.SkipOutboundPorts = []redirect.PortRange{redirect.Port(25), {First: 1, Last: 24}}
		other.SkipInboundPorts = []redirect.PortRange{{First: 60000, Last: 65535}}
		other.IgnoredCIDRs, _ = redirect.ParsePrefixes("10.96.0.0/12,192.168.1.10,fd00::/20,2001:db8::/127,::/0")
		other.ProxyUID = 65534
		rs2 := mustPlan(t, other)
		if err := b.Install(rs2); err != nil {
			t.Fatal(err)
		}
		if got, err := nftList(); err != nil || got != rs2.String() {
			t.Errorf("after replacing (%v):\n%s\nwant:\n%s", err, got, rs2)
		}
		if err := b.Install(rs); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a failed install keeps the previous rules", func(t *testing.T) {
		broken := redirect.Ruleset{Chains: []redirect.Chain{
			{Name: "x", Hook: redirect.HookOutput, Priority: redirect.NATPriority},
			{Name: "x", Hook: redirect.HookPrerouting, Priority: redirect.NATPriority},
		}}
		err := b.Install(broken)
		if err == nil {
			t.Fatal("the kernel accepted a chain with two hooks")
		}
		if errors.Is(err, redirect.ErrUnavailable) {
			t.Errorf("a refused batch was reported as a kernel without nftables: %v", err)
		}
		if got, err := nftList(); err != nil || got != first {
			t.Errorf("after a failed install (%v):\n%s\nwant:\n%s", err, got, first)
		}
	})
	t.Run("remove deletes only the table", func(t *testing.T) {
		if err := b.Remove(); err != nil {
			t.Fatal(err)
		}
		if out, err := nftList(); err == nil {
			t.Errorf("table still listed after Remove:\n%s", out)
		}
		if _, err := n.nsRun(n.pod, "nft", "list", "table", "inet", "other"); err != nil {
			t.Errorf("another table was touched: %v", err)
		}
		if err := b.Remove(); err != nil {
			t.Errorf("removing nothing: %v", err)
		}
	})
}

// TestNftablesListRefusesForeignRules checks that a table changed by hand is reported, and that Install repairs it.
func TestNftablesListRefusesForeignRules(t *testing.T) {
	n := newPodNet(t)
	needTool(t, "nft")
	b := &redirect.Nftables{NetNS: n.podPath}
	rs := mustPlan(t, redirect.DefaultConfig())
	if err := b.Install(rs); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "ip", "netns", "exec", n.pod, "nft", "add", "rule", "inet", redirect.TableName, redirect.OutputChain, "counter")
	if _, err := b.List(); err == nil || !strings.Contains(err.Error(), "not a rule proxy-init writes") {
		t.Errorf("List of a changed table: %v", err)
	}
	if err := b.Install(rs); err != nil {
		t.Fatal(err)
	}
	if got, err := b.List(); err != nil || !reflect.DeepEqual(got, rs) {
		t.Errorf("after reinstalling: %v\n%s", err, got)
	}
}

// TestIPTablesInstall checks that the iptables backend adds its jumps once however often it runs, replaces its
// chains' rules, and removes everything it added.
func TestIPTablesInstall(t *testing.T) {
	n := newPodNet(t)
	for _, tool := range []string{"nsenter", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore"} {
		needTool(t, tool)
	}
	b := &redirect.IPTables{NetNS: n.podPath}
	rs := mustPlan(t, testConfig())
	for range 3 {
		if err := b.Install(rs); err != nil {
			t.Fatal(err)
		}
	}
	first, err := b.Dump()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"-A OUTPUT -p tcp -j TRELLIS_OUTPUT", "-A PREROUTING -p tcp -j TRELLIS_INBOUND"} {
		if got := strings.Count(first, line+"\n"); got != 2 { // once per family
			t.Errorf("%q appears %d times, want once per family:\n%s", line, got, first)
		}
	}
	for _, want := range []string{"-d 10.231.1.0/24 -j RETURN", "-d fd00:231:1::/64 -j RETURN", "--dport 6000:6100 -j RETURN",
		"-m owner --uid-owner 2102 -j RETURN", "-j REDIRECT --to-ports 4140", "-j REDIRECT --to-ports 4143"} {
		if !strings.Contains(first, want) {
			t.Errorf("iptables-save lacks %q:\n%s", want, first)
		}
	}
	other := redirect.DefaultConfig()
	if err := b.Install(mustPlan(t, other)); err != nil {
		t.Fatal(err)
	}
	if second, _ := b.Dump(); strings.Contains(second, "10.231.1.0/24") || strings.Contains(second, "6000:6100") {
		t.Errorf("old rules survived a new install:\n%s", second)
	}
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	if dump, err := b.Dump(); !errors.Is(err, redirect.ErrNotInstalled) {
		t.Errorf("after Remove: %v\n%s", err, dump)
	}
}
