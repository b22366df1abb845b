package redirect

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Offsets of the fields the rules read.
const (
	ipv4DaddrOffset = 16 // destination address in the IPv4 header
	ipv6DaddrOffset = 24 // destination address in the IPv6 header
	tcpDportOffset  = 2  // destination port in the TCP header
	ifNameLen       = unix.IFNAMSIZ
)

// exprs translates a rule into nftables expressions, in the same shape the nft tool produces for the rule's text, so
// that `nft list` prints the rule as Rule.String does.
func exprs(r Rule) ([]expr.Any, error) {
	m, err := matchExprs(r.Match)
	if err != nil {
		return nil, err
	}
	a, err := actionExprs(r.Action)
	if err != nil {
		return nil, err
	}
	if r.Action.Kind == ActionRedirect && r.Match.Kind != MatchTCP && r.Match.Kind != MatchDestPorts {
		return nil, fmt.Errorf("%s: a redirect needs a TCP match", r)
	}
	return append(m, a...), nil
}

func matchExprs(m Match) ([]expr.Any, error) {
	switch m.Kind {
	case MatchTCP:
		return metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_TCP}), nil
	case MatchSocketUID:
		return metaEq(expr.MetaKeySKUID, binary.NativeEndian.AppendUint32(nil, m.UID)), nil
	case MatchOutInterface:
		if len(m.Interface) == 0 || len(m.Interface) >= ifNameLen {
			return nil, fmt.Errorf("interface name %q: want 1 to %d bytes", m.Interface, ifNameLen-1)
		}
		name := make([]byte, ifNameLen)
		copy(name, m.Interface)
		return metaEq(expr.MetaKeyOIFNAME, name), nil
	case MatchDestination:
		return destinationExprs(m.Prefix)
	case MatchDestPorts:
		return portExprs(m.Ports), nil
	}
	return nil, fmt.Errorf("unknown match kind %d", m.Kind)
}

func metaEq(key expr.MetaKey, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
	}
}

// destinationExprs matches the address family, then the destination address: only the prefix's bytes when its
// length is a multiple of 8, else the whole address under a mask (as nft does).
func destinationExprs(p netip.Prefix) ([]expr.Any, error) {
	if !p.IsValid() {
		return nil, errors.New("invalid destination prefix")
	}
	p = p.Masked()
	family, offset := byte(unix.NFPROTO_IPV4), uint32(ipv4DaddrOffset)
	if p.Addr().Is6() {
		family, offset = unix.NFPROTO_IPV6, ipv6DaddrOffset
	}
	out := metaEq(expr.MetaKeyNFPROTO, []byte{family})
	if p.Bits() == 0 {
		return out, nil
	}
	n := uint32(p.Bits()) / 8
	if p.Bits()%8 != 0 {
		n = uint32(p.Addr().BitLen()) / 8
	}
	out = append(out, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n})
	if p.Bits()%8 != 0 {
		mask := prefixMask(p.Bits(), int(n))
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()[:n]}), nil
}

// prefixMask returns n bytes whose first bits bits are set.
func prefixMask(prefixBits, n int) []byte {
	mask := make([]byte, n)
	for i := range prefixBits {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return mask
}

// portExprs matches TCP and a destination port or inclusive range (two comparisons, as nft writes a range).
func portExprs(r PortRange) []expr.Any {
	out := metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_TCP})
	out = append(out, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: tcpDportOffset, Len: 2})
	if r.First == r.Last {
		return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(r.First)})
	}
	return append(out,
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: be16(r.First)},
		&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: be16(r.Last)})
}

func actionExprs(a Action) ([]expr.Any, error) {
	switch a.Kind {
	case ActionReturn:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}, nil
	case ActionRedirect:
		if a.Port == 0 {
			return nil, errors.New("redirect to port 0")
		}
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: be16(a.Port)},
			&expr.Redir{RegisterProtoMin: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
		}, nil
	}
	return nil, fmt.Errorf("unknown action kind %d", a.Kind)
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// errForeign says a rule has a shape proxy-init never writes.
var errForeign = errors.New("not a rule proxy-init writes")

// decode is the inverse of exprs: it recognises the expressions of every rule exprs can build and fails on anything
// else, so a table changed by hand is reported instead of misdescribed.
func decode(es []expr.Any) (Rule, error) {
	d := &decoder{es: es}
	m, err := d.match()
	if err != nil {
		return Rule{}, err
	}
	a, err := d.action()
	if err != nil {
		return Rule{}, err
	}
	if d.i != len(es) {
		return Rule{}, fmt.Errorf("%w: %d trailing expressions", errForeign, len(es)-d.i)
	}
	return Rule{Match: m, Action: a}, nil
}

// decoder walks a rule's expressions front to back.
type decoder struct {
	es []expr.Any
	i  int
}

func (d *decoder) next() expr.Any {
	if d.i >= len(d.es) {
		return nil
	}
	e := d.es[d.i]
	d.i++
	return e
}

func (d *decoder) peek() expr.Any {
	if d.i >= len(d.es) {
		return nil
	}
	return d.es[d.i]
}

// metaEq reads `meta <key> == data` into register 1.
func (d *decoder) metaEq() (expr.MetaKey, []byte, error) {
	meta, ok := d.next().(*expr.Meta)
	if !ok || meta.SourceRegister || meta.Register != 1 {
		return 0, nil, fmt.Errorf("%w: no meta load first", errForeign)
	}
	data, err := d.cmp(expr.CmpOpEq)
	return meta.Key, data, err
}

func (d *decoder) cmp(op expr.CmpOp) ([]byte, error) {
	c, ok := d.next().(*expr.Cmp)
	if !ok || c.Op != op || c.Register != 1 {
		return nil, fmt.Errorf("%w: expected a comparison", errForeign)
	}
	return c.Data, nil
}

func (d *decoder) match() (Match, error) {
	key, data, err := d.metaEq()
	if err != nil {
		return Match{}, err
	}
	switch {
	case key == expr.MetaKeyL4PROTO && bytes.Equal(data, []byte{unix.IPPROTO_TCP}):
		if _, isPayload := d.peek().(*expr.Payload); isPayload {
			return d.ports()
		}
		return Match{Kind: MatchTCP}, nil
	case key == expr.MetaKeySKUID && len(data) == 4:
		return Match{Kind: MatchSocketUID, UID: binary.NativeEndian.Uint32(data)}, nil
	case key == expr.MetaKeyOIFNAME && len(data) == ifNameLen:
		return Match{Kind: MatchOutInterface, Interface: string(bytes.TrimRight(data, "\x00"))}, nil
	case key == expr.MetaKeyNFPROTO && len(data) == 1:
		return d.destination(data[0])
	}
	return Match{}, fmt.Errorf("%w: unexpected meta match %d", errForeign, key)
}

func (d *decoder) ports() (Match, error) {
	p, ok := d.next().(*expr.Payload)
	if !ok || p.Base != expr.PayloadBaseTransportHeader || p.Offset != tcpDportOffset || p.Len != 2 || p.DestRegister != 1 {
		return Match{}, fmt.Errorf("%w: unexpected transport header load", errForeign)
	}
	if c, ok := d.peek().(*expr.Cmp); ok && c.Op == expr.CmpOpEq && len(c.Data) == 2 {
		d.i++
		return Match{Kind: MatchDestPorts, Ports: Port(binary.BigEndian.Uint16(c.Data))}, nil
	}
	lo, err := d.cmp(expr.CmpOpGte)
	if err != nil {
		return Match{}, err
	}
	hi, err := d.cmp(expr.CmpOpLte)
	if err != nil || len(lo) != 2 || len(hi) != 2 {
		return Match{}, fmt.Errorf("%w: unexpected port range", errForeign)
	}
	r := PortRange{First: binary.BigEndian.Uint16(lo), Last: binary.BigEndian.Uint16(hi)}
	return Match{Kind: MatchDestPorts, Ports: r}, nil
}

func (d *decoder) destination(family byte) (Match, error) {
	offset, size := uint32(ipv4DaddrOffset), 4
	switch family {
	case unix.NFPROTO_IPV4:
	case unix.NFPROTO_IPV6:
		offset, size = ipv6DaddrOffset, 16
	default:
		return Match{}, fmt.Errorf("%w: unexpected family %d", errForeign, family)
	}
	addr := make([]byte, size)
	p, ok := d.peek().(*expr.Payload)
	if !ok {
		return Match{Kind: MatchDestination, Prefix: netip.PrefixFrom(addrFrom(addr), 0)}, nil
	}
	d.i++
	if p.Base != expr.PayloadBaseNetworkHeader || p.Offset != offset || p.Len == 0 || int(p.Len) > size || p.DestRegister != 1 {
		return Match{}, fmt.Errorf("%w: unexpected network header load", errForeign)
	}
	prefixBits := int(p.Len) * 8
	if b, ok := d.peek().(*expr.Bitwise); ok {
		d.i++
		if prefixBits, ok = maskBits(b, p.Len); !ok {
			return Match{}, fmt.Errorf("%w: unexpected address mask", errForeign)
		}
	}
	data, err := d.cmp(expr.CmpOpEq)
	if err != nil || len(data) != int(p.Len) {
		return Match{}, fmt.Errorf("%w: unexpected address comparison", errForeign)
	}
	copy(addr, data)
	return Match{Kind: MatchDestination, Prefix: netip.PrefixFrom(addrFrom(addr), prefixBits)}, nil
}

// maskBits returns the prefix length of a contiguous leading-ones mask applied in place to register 1.
func maskBits(b *expr.Bitwise, n uint32) (int, bool) {
	if b.SourceRegister != 1 || b.DestRegister != 1 || b.Len != n || len(b.Mask) != int(n) || bytes.Count(b.Xor, []byte{0}) != len(b.Xor) {
		return 0, false
	}
	ones := 0
	for _, m := range b.Mask {
		ones += bits.OnesCount8(m)
	}
	return ones, bytes.Equal(b.Mask, prefixMask(ones, int(n)))
}

func addrFrom(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (d *decoder) action() (Action, error) {
	switch e := d.next().(type) {
	case *expr.Verdict:
		if e.Kind == expr.VerdictReturn {
			return Action{Kind: ActionReturn}, nil
		}
	case *expr.Immediate:
		// The kernel reports the maximum port register as the minimum's when only the minimum was given.
		r, ok := d.next().(*expr.Redir)
		if ok && e.Register == 1 && len(e.Data) == 2 && r.RegisterProtoMin == 1 && r.RegisterProtoMax <= 1 &&
			r.Flags == unix.NF_NAT_RANGE_PROTO_SPECIFIED {
			return Action{Kind: ActionRedirect, Port: binary.BigEndian.Uint16(e.Data)}, nil
		}
	}
	return Action{}, fmt.Errorf("%w: unexpected action", errForeign)
}
