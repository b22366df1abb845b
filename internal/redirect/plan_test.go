package redirect

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// fullConfig sets every option, with duplicates, overlaps and host bits for Plan to clean up.
func fullConfig() Config {
	c := DefaultConfig()
	c.SkipInboundPorts = []PortRange{Port(9000), Port(25), {First: 9000, Last: 9010}}
	c.SkipOutboundPorts = []PortRange{{First: 8000, Last: 8100}, Port(5432), Port(8101), Port(3306)}
	c.IgnoredCIDRs = []netip.Prefix{
		netip.MustParsePrefix("fd00:1::/20"), netip.MustParsePrefix("10.96.7.1/12"),
		netip.MustParsePrefix("192.168.1.10/32"), netip.MustParsePrefix("10.100.0.0/16"),
		netip.MustParsePrefix("2001:db8::/32"),
	}
	return c
}

// golden compares got with testdata/name, or rewrites the file under -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestPlanGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"default", DefaultConfig()},
		{"full", fullConfig()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := Plan(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name+".nft", rs.String())
			golden(t, tc.name+".iptables", (&IPTables{}).Render(rs))
		})
	}
}

// TestPlanOrder checks the properties the interception depends on, whatever the configuration: the proxy's
// exemption and loopback come first in the output chain, and each chain ends with its redirect.
func TestPlanOrder(t *testing.T) {
	rs, err := Plan(fullConfig())
	if err != nil {
		t.Fatal(err)
	}
	out, in := rs.Chains[0], rs.Chains[1]
	if out.Hook != HookOutput || in.Hook != HookPrerouting || out.Priority != NATPriority || in.Priority != NATPriority {
		t.Fatalf("chains: %+v, %+v", out, in)
	}
	if m := out.Rules[0].Match; m.Kind != MatchSocketUID || m.UID != 2102 {
		t.Errorf("first output rule %s, want the proxy UID exemption", out.Rules[0])
	}
	if m := out.Rules[1].Match; m.Kind != MatchOutInterface || m.Interface != "lo" {
		t.Errorf("second output rule %s, want loopback", out.Rules[1])
	}
	for _, c := range []struct {
		chain Chain
		port  uint16
	}{{out, 4140}, {in, 4143}} {
		last := c.chain.Rules[len(c.chain.Rules)-1]
		if last.Match.Kind != MatchTCP || last.Action != (Action{Kind: ActionRedirect, Port: c.port}) {
			t.Errorf("chain %s ends with %s", c.chain.Name, last)
		}
		for _, r := range c.chain.Rules[:len(c.chain.Rules)-1] {
			if r.Action.Kind != ActionReturn {
				t.Errorf("chain %s: %s before the redirect", c.chain.Name, r)
			}
		}
	}
}

func TestPlanRejectsInvalidConfig(t *testing.T) {
	c := DefaultConfig()
	c.InboundPort = c.OutboundPort
	if rs, err := Plan(c); err == nil {
		t.Fatalf("Plan accepted an invalid config:\n%s", rs)
	}
}

func TestMergeRanges(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []PortRange
		want []PortRange
	}{
		{"empty", nil, nil},
		{"sorted", []PortRange{Port(443), Port(80)}, []PortRange{Port(80), Port(443)}},
		{"duplicates", []PortRange{Port(80), Port(80)}, []PortRange{Port(80)}},
		{"adjacent", []PortRange{Port(80), Port(81), {First: 82, Last: 90}}, []PortRange{{First: 80, Last: 90}}},
		{"contained", []PortRange{{First: 1, Last: 100}, Port(50)}, []PortRange{{First: 1, Last: 100}}},
		{"overlapping", []PortRange{{First: 10, Last: 20}, {First: 15, Last: 30}}, []PortRange{{First: 10, Last: 30}}},
		{"gap kept", []PortRange{Port(10), Port(12)}, []PortRange{Port(10), Port(12)}},
		{"top of the range", []PortRange{Port(65535), {First: 65000, Last: 65534}}, []PortRange{{First: 65000, Last: 65535}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mergeRanges(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNormalizePrefixes(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		in   []netip.Prefix
		want []netip.Prefix
	}{
		{"empty", nil, nil},
		{"host bits cleared", []netip.Prefix{p("10.1.2.3/8")}, []netip.Prefix{p("10.0.0.0/8")}},
		{"IPv4 before IPv6", []netip.Prefix{p("fd00::/8"), p("10.0.0.0/8")}, []netip.Prefix{p("10.0.0.0/8"), p("fd00::/8")}},
		{"covered dropped", []netip.Prefix{p("10.1.0.0/16"), p("10.0.0.0/8"), p("10.0.0.0/8")}, []netip.Prefix{p("10.0.0.0/8")}},
		{"covered IPv6 dropped", []netip.Prefix{p("fd00:231:1::/64"), p("fd00::/8")}, []netip.Prefix{p("fd00::/8")}},
		{"siblings kept", []netip.Prefix{p("10.2.0.0/16"), p("10.1.0.0/16")}, []netip.Prefix{p("10.1.0.0/16"), p("10.2.0.0/16")}},
		{"everything", []netip.Prefix{p("192.168.0.0/16"), p("0.0.0.0/0")}, []netip.Prefix{p("0.0.0.0/0")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := normalizePrefixes(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestRuleString(t *testing.T) {
	p := netip.MustParsePrefix
	ret := Action{Kind: ActionReturn}
	for _, tc := range []struct {
		rule Rule
		want string
	}{
		{Rule{Match: Match{Kind: MatchSocketUID, UID: 2102}, Action: ret}, "meta skuid 2102 return"},
		{Rule{Match: Match{Kind: MatchOutInterface, Interface: "lo"}, Action: ret, Comment: "loopback"}, `oifname "lo" return comment "loopback"`},
		{Rule{Match: Match{Kind: MatchDestination, Prefix: p("10.0.0.0/8")}, Action: ret}, "ip daddr 10.0.0.0/8 return"},
		{Rule{Match: Match{Kind: MatchDestination, Prefix: p("10.1.2.3/32")}, Action: ret}, "ip daddr 10.1.2.3 return"},
		{Rule{Match: Match{Kind: MatchDestination, Prefix: p("0.0.0.0/0")}, Action: ret}, "meta nfproto ipv4 return"},
		{Rule{Match: Match{Kind: MatchDestination, Prefix: p("fd00::/8")}, Action: ret}, "ip6 daddr fd00::/8 return"},
		{Rule{Match: Match{Kind: MatchDestination, Prefix: p("::/0")}, Action: ret}, "meta nfproto ipv6 return"},
		{Rule{Match: Match{Kind: MatchDestPorts, Ports: Port(80)}, Action: ret}, "tcp dport 80 return"},
		{Rule{Match: Match{Kind: MatchDestPorts, Ports: PortRange{First: 1, Last: 1024}}, Action: ret}, "tcp dport 1-1024 return"},
		{Rule{Match: Match{Kind: MatchTCP}, Action: Action{Kind: ActionRedirect, Port: 4140}}, "meta l4proto tcp redirect to :4140"},
	} {
		if got := tc.rule.String(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}
