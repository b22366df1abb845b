package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TestExprs pins the expressions of each kind of rule to those `nft --debug=netlink` shows for the same rule text,
// so nft lists proxy-init's rules exactly as Rule.String writes them.
func TestExprs(t *testing.T) {
	l4tcp := []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Register: 1, Data: []byte{6}}}
	ret := &expr.Verdict{Kind: expr.VerdictReturn}
	dport := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	nfproto := func(f byte) []expr.Any {
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Register: 1, Data: []byte{f}}}
	}
	daddr := func(off, n uint32) *expr.Payload {
		return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
	}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	for _, tc := range []struct {
		rule string // nft text
		got  Rule
		want []expr.Any
	}{
		{"meta skuid 2102 return", skip(Match{Kind: MatchSocketUID, UID: 2102}, ""), []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Register: 1, Data: []byte{0x36, 0x08, 0, 0}}, ret}},
		{`oifname "lo" return`, skip(Match{Kind: MatchOutInterface, Interface: "lo"}, ""), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Register: 1, Data: []byte("lo\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")}, ret}},
		{"ip daddr 10.231.1.0/24 return", skip(Match{Kind: MatchDestination, Prefix: netip.MustParsePrefix("10.231.1.0/24")}, ""),
			cat(nfproto(2), []expr.Any{daddr(16, 3), &expr.Cmp{Register: 1, Data: []byte{10, 231, 1}}, ret})},
		{"ip daddr 10.1.2.3 return", skip(Match{Kind: MatchDestination, Prefix: netip.MustParsePrefix("10.1.2.3/32")}, ""),
			cat(nfproto(2), []expr.Any{daddr(16, 4), &expr.Cmp{Register: 1, Data: []byte{10, 1, 2, 3}}, ret})},
		{"ip daddr 10.96.0.0/12 return", skip(Match{Kind: MatchDestination, Prefix: netip.MustParsePrefix("10.96.0.0/12")}, ""),
			cat(nfproto(2), []expr.Any{daddr(16, 4),
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0xff, 0xf0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
				&expr.Cmp{Register: 1, Data: []byte{10, 96, 0, 0}}, ret})},
		{"meta nfproto ipv4 return", skip(Match{Kind: MatchDestination, Prefix: netip.MustParsePrefix("0.0.0.0/0")}, ""),
			cat(nfproto(2), []expr.Any{ret})},
		{"ip6 daddr fd00:231:1::/64 return", skip(Match{Kind: MatchDestination, Prefix: netip.MustParsePrefix("fd00:231:1::/64")}, ""),
			cat(nfproto(10), []expr.Any{daddr(24, 8), &expr.Cmp{Register: 1, Data: []byte{0xfd, 0, 2, 0x31, 0, 1, 0, 0}}, ret})},
		{"tcp dport 5432 return", skip(Match{Kind: MatchDestPorts, Ports: Port(5432)}, ""),
			cat(l4tcp, []expr.Any{dport, &expr.Cmp{Register: 1, Data: []byte{0x15, 0x38}}, ret})},
		{"tcp dport 8000-8100 return", skip(Match{Kind: MatchDestPorts, Ports: PortRange{First: 8000, Last: 8100}}, ""),
			cat(l4tcp, []expr.Any{dport, &expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: []byte{0x1f, 0x40}},
				&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: []byte{0x1f, 0xa4}}, ret})},
		{"meta l4proto tcp redirect to :4140", redirect(4140, ""),
			cat(l4tcp, []expr.Any{&expr.Immediate{Register: 1, Data: []byte{0x10, 0x2c}},
				&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED}})},
	} {
		t.Run(tc.rule, func(t *testing.T) {
			if s := tc.got.String(); s != tc.rule {
				t.Errorf("String() = %q", s)
			}
			got, err := exprs(tc.got)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("expressions differ\ngot:  %s\nwant: %s", dumpExprs(got), dumpExprs(tc.want))
			}
		})
	}
}

func dumpExprs(es []expr.Any) string {
	var parts []string
	for _, e := range es {
		parts = append(parts, fmt.Sprintf("%T%+v", e, e))
	}
	return strings.Join(parts, " ")
}

// TestDecodeRoundTrip checks that decode recovers every rule Plan writes, and prefixes of every awkward length.
func TestDecodeRoundTrip(t *testing.T) {
	rs, err := Plan(fullConfig())
	if err != nil {
		t.Fatal(err)
	}
	var rules []Rule
	for _, c := range rs.Chains {
		rules = append(rules, c.Rules...)
	}
	for _, s := range []string{"0.0.0.0/0", "128.0.0.0/1", "10.0.0.0/7", "10.0.0.0/9", "10.1.2.0/31", "10.1.2.3/32",
		"::/0", "8000::/1", "fc00::/7", "fd00::/20", "fd00::/127", "fd00::1/128"} {
		rules = append(rules, skip(Match{Kind: MatchDestination, Prefix: netip.MustParsePrefix(s).Masked()}, ""))
	}
	rules = append(rules, skip(Match{Kind: MatchDestPorts, Ports: PortRange{First: 1, Last: 65535}}, ""),
		redirect(65535, ""), skip(Match{Kind: MatchSocketUID, UID: 4294967294}, ""),
		skip(Match{Kind: MatchOutInterface, Interface: "eth0123456789ab"}, ""))
	for _, r := range rules {
		t.Run(r.String(), func(t *testing.T) {
			es, err := exprs(r)
			if err != nil {
				t.Fatal(err)
			}
			got, err := decode(es)
			r.Comment = "" // comments travel as user data, not expressions
			if err != nil || !reflect.DeepEqual(got, r) {
				t.Errorf("decode: %v, %v; want %v", got, err, r)
			}
		})
	}
}

// TestDecodeRefusesForeignRules checks that rules proxy-init never writes are reported, not misdescribed.
func TestDecodeRefusesForeignRules(t *testing.T) {
	meta := func(k expr.MetaKey) *expr.Meta { return &expr.Meta{Key: k, Register: 1} }
	eq := func(b ...byte) *expr.Cmp { return &expr.Cmp{Register: 1, Data: b} }
	ret := &expr.Verdict{Kind: expr.VerdictReturn}
	for _, tc := range []struct {
		name string
		es   []expr.Any
	}{
		{"empty", nil},
		{"counter", []expr.Any{&expr.Counter{}}},
		{"mark match", []expr.Any{meta(expr.MetaKeyMARK), eq(1, 0, 0, 0), ret}},
		{"udp", []expr.Any{meta(expr.MetaKeyL4PROTO), eq(17), ret}},
		{"accept verdict", []expr.Any{meta(expr.MetaKeyL4PROTO), eq(6), &expr.Verdict{Kind: expr.VerdictAccept}}},
		{"no action", []expr.Any{meta(expr.MetaKeyL4PROTO), eq(6)}},
		{"trailing counter", []expr.Any{meta(expr.MetaKeyL4PROTO), eq(6), ret, &expr.Counter{}}},
		{"source address", []expr.Any{meta(expr.MetaKeyNFPROTO), eq(2),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, eq(10, 0, 0, 1), ret}},
		{"source port", []expr.Any{meta(expr.MetaKeyL4PROTO), eq(6),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2}, eq(0, 80), ret}},
		{"holey mask", []expr.Any{meta(expr.MetaKeyNFPROTO), eq(2),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0xa0}, Xor: []byte{0}}, eq(0xa0), ret}},
		{"redirect with random ports", []expr.Any{meta(expr.MetaKeyL4PROTO), eq(6),
			&expr.Immediate{Register: 1, Data: []byte{0x10, 0x2c}}, &expr.Redir{RegisterProtoMin: 1, Flags: 0x6}}},
		{"not-equal comparison", []expr.Any{meta(expr.MetaKeySKUID), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{1, 0, 0, 0}}, ret}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r, err := decode(tc.es); !errors.Is(err, errForeign) {
				t.Errorf("decode: %v, %v; want errForeign", r, err)
			}
		})
	}
}

func TestExprsRejectsImpossibleRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule Rule
	}{
		{"redirect without TCP", Rule{Match: Match{Kind: MatchSocketUID, UID: 1}, Action: Action{Kind: ActionRedirect, Port: 1}}},
		{"redirect to port 0", redirect(0, "")},
		{"interface name too long", skip(Match{Kind: MatchOutInterface, Interface: "a-very-long-name"}, "")},
		{"empty interface name", skip(Match{Kind: MatchOutInterface}, "")},
		{"invalid prefix", skip(Match{Kind: MatchDestination}, "")},
		{"no match", Rule{Action: Action{Kind: ActionReturn}}},
		{"no action", Rule{Match: Match{Kind: MatchTCP}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if es, err := exprs(tc.rule); err == nil {
				t.Errorf("accepted: %s", dumpExprs(es))
			}
		})
	}
}

// TestKernelError checks the messages users see when the kernel refuses.
func TestKernelError(t *testing.T) {
	wrap := func(errno unix.Errno) error { return fmt.Errorf("conn.Receive: %w", errno) }
	for _, tc := range []struct {
		name            string
		err             error
		probe           func() error
		wantUnavailable bool
		want            string
	}{
		{"no nfnetlink", wrap(unix.EPROTONOSUPPORT), nil, true,
			"nftables is not available in this kernel: conn.Receive: protocol not supported; installing the redirect rules needs"},
		{"missing nat chain or redir module", wrap(unix.ENOENT), nil, true, "--mode=iptables"},
		{"no nf_tables subsystem", wrap(unix.EOPNOTSUPP), func() error { return wrap(unix.EOPNOTSUPP) }, true, "nft_chain_nat"},
		{"batch refused by a working kernel", wrap(unix.EOPNOTSUPP), func() error { return nil }, false,
			"installing the redirect rules: conn.Receive: operation not supported"},
		{"no privilege", wrap(unix.EPERM), nil, false, "proxy-init needs CAP_NET_ADMIN"},
		{"other", wrap(unix.EINVAL), nil, false, "installing the redirect rules: conn.Receive: invalid argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := kernelError("installing", tc.err, tc.probe)
			if got := errors.Is(err, ErrUnavailable); got != tc.wantUnavailable {
				t.Errorf("errors.Is(ErrUnavailable) = %v for %v", got, err)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("%v does not wrap %v", err, tc.err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q lacks %q", err, tc.want)
			}
		})
	}
}
