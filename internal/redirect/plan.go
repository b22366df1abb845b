package redirect

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Where the rules live.
const (
	// TableName is the nftables table (family inet, so it covers IPv4 and IPv6) that holds every rule; proxy-init
	// owns it entirely and replaces it as a whole.
	TableName = "trellis"
	// OutputChain redirects the workload's outbound TCP; it is hooked at output.
	OutputChain = "output"
	// PreroutingChain redirects TCP arriving for the workload; it is hooked at prerouting.
	PreroutingChain = "prerouting"
	// NATPriority is the priority of both chains: dstnat (-100), where iptables' nat table runs.
	NATPriority = -100
	// LoopbackInterface is the interface whose traffic always stays direct.
	LoopbackInterface = "lo"
)

// Hook is the netfilter hook a chain is attached to.
type Hook string

// The hooks Trellis uses.
const (
	// HookOutput sees packets the pod's own processes send.
	HookOutput Hook = "output"
	// HookPrerouting sees packets arriving from the network.
	HookPrerouting Hook = "prerouting"
)

// Ruleset is the complete, ordered description of what proxy-init installs: one nat chain per direction.
type Ruleset struct {
	// Chains are the table's chains in creation order.
	Chains []Chain
}

// Chain is a base nat chain with policy accept; its rules are evaluated in order and the first match decides.
type Chain struct {
	// Name is the chain's name in the table (OutputChain or PreroutingChain).
	Name string
	// Hook is where the chain is attached.
	Hook Hook
	// Priority orders the chain among others at the same hook (NATPriority).
	Priority int32
	// Rules are evaluated in order.
	Rules []Rule
}

// Rule is one match and what to do with a matching packet.
type Rule struct {
	// Match selects packets.
	Match Match
	// Action is applied to selected packets.
	Action Action
	// Comment says why the rule exists; it is stored with the rule in the kernel. Optional.
	Comment string
}

// MatchKind names what a Match compares.
type MatchKind uint8

// The kinds of match a Rule can have.
const (
	// MatchTCP selects every TCP packet.
	MatchTCP MatchKind = iota + 1
	// MatchSocketUID selects locally generated packets whose socket belongs to Match.UID.
	MatchSocketUID
	// MatchOutInterface selects packets leaving through Match.Interface.
	MatchOutInterface
	// MatchDestination selects packets whose destination address is in Match.Prefix.
	MatchDestination
	// MatchDestPorts selects TCP packets whose destination port is in Match.Ports.
	MatchDestPorts
)

// Match selects packets. Kind says which one field is used.
type Match struct {
	// Kind says what is compared.
	Kind MatchKind
	// UID is the socket owner for MatchSocketUID.
	UID uint32
	// Interface is the interface name for MatchOutInterface.
	Interface string
	// Prefix is the destination network for MatchDestination.
	Prefix netip.Prefix
	// Ports is the destination port range for MatchDestPorts.
	Ports PortRange
}

// ActionKind names what an Action does.
type ActionKind uint8

// The actions a Rule can take.
const (
	// ActionReturn leaves the packet alone: it goes where it was addressed.
	ActionReturn ActionKind = iota + 1
	// ActionRedirect sends the packet to Action.Port on the pod's own address.
	ActionRedirect
)

// Action is what happens to a selected packet.
type Action struct {
	// Kind says what happens.
	Kind ActionKind
	// Port is the destination of ActionRedirect.
	Port uint16
}

// Plan turns a valid Config into the Ruleset proxy-init installs. It is pure: the same Config always gives the same
// Ruleset. Lists are sorted, duplicates dropped, overlapping port ranges merged and CIDRs inside others dropped.
func Plan(c Config) (Ruleset, error) {
	if err := c.Validate(); err != nil {
		return Ruleset{}, err
	}
	return Ruleset{Chains: []Chain{outputChain(c), preroutingChain(c)}}, nil
}

// outputChain: the proxy's own traffic, loopback, ignored CIDRs and skipped ports stay direct; other TCP goes to the
// outbound port.
func outputChain(c Config) Chain {
	rules := []Rule{
		skip(Match{Kind: MatchSocketUID, UID: c.ProxyUID}, "the proxy's own traffic"),
		skip(Match{Kind: MatchOutInterface, Interface: LoopbackInterface}, "loopback stays direct"),
	}
	for _, p := range normalizePrefixes(c.IgnoredCIDRs) {
		rules = append(rules, skip(Match{Kind: MatchDestination, Prefix: p}, "ignored CIDR"))
	}
	for _, r := range mergeRanges(c.SkipOutboundPorts) {
		rules = append(rules, skip(Match{Kind: MatchDestPorts, Ports: r}, "skipped outbound port"))
	}
	rules = append(rules, redirect(c.OutboundPort, "to the proxy's outbound port"))
	return Chain{Name: OutputChain, Hook: HookOutput, Priority: NATPriority, Rules: rules}
}

// preroutingChain: the proxy's own ports and skipped ports are reached directly; other TCP goes to the inbound port.
func preroutingChain(c Config) Chain {
	own := []PortRange{Port(c.OutboundPort), Port(c.InboundPort)}
	for _, p := range c.ProxyPorts {
		own = append(own, Port(p))
	}
	var rules []Rule
	for _, r := range mergeRanges(own) {
		rules = append(rules, skip(Match{Kind: MatchDestPorts, Ports: r}, "proxy port"))
	}
	for _, r := range mergeRanges(c.SkipInboundPorts) {
		rules = append(rules, skip(Match{Kind: MatchDestPorts, Ports: r}, "skipped inbound port"))
	}
	rules = append(rules, redirect(c.InboundPort, "to the proxy's inbound port"))
	return Chain{Name: PreroutingChain, Hook: HookPrerouting, Priority: NATPriority, Rules: rules}
}

func skip(m Match, comment string) Rule {
	return Rule{Match: m, Action: Action{Kind: ActionReturn}, Comment: comment}
}

func redirect(port uint16, comment string) Rule {
	return Rule{Match: Match{Kind: MatchTCP}, Action: Action{Kind: ActionRedirect, Port: port}, Comment: comment}
}

// mergeRanges sorts ranges and merges those that overlap or touch.
func mergeRanges(in []PortRange) []PortRange {
	sorted := slices.Clone(in)
	slices.SortFunc(sorted, func(a, b PortRange) int { return cmp.Compare(a.First, b.First) })
	var out []PortRange
	for _, r := range sorted {
		if n := len(out); n > 0 && int(r.First) <= int(out[n-1].Last)+1 {
			out[n-1].Last = max(out[n-1].Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// normalizePrefixes clears host bits, sorts IPv4 before IPv6 and drops prefixes covered by another one.
func normalizePrefixes(in []netip.Prefix) []netip.Prefix {
	sorted := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		sorted = append(sorted, p.Masked())
	}
	slices.SortFunc(sorted, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	var out []netip.Prefix
	for _, p := range sorted {
		covered := slices.ContainsFunc(out, func(q netip.Prefix) bool { return q.Bits() <= p.Bits() && q.Contains(p.Addr()) })
		if !covered {
			out = append(out, p)
		}
	}
	return out
}

// String renders the ruleset in the syntax of `nft list table inet trellis`.
func (rs Ruleset) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	for i, c := range rs.Chains {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype nat hook %s priority %s; policy accept;\n", c.Name, c.Hook,
			priorityName(c.Hook, c.Priority))
		for _, r := range c.Rules {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// priorityName spells a priority the way nft does: dstnat at prerouting, a number elsewhere.
func priorityName(h Hook, p int32) string {
	if h == HookPrerouting && p == NATPriority {
		return "dstnat"
	}
	return fmt.Sprint(p)
}

// String renders the rule in nft syntax, e.g. `tcp dport 8000-8100 return comment "skipped outbound port"`.
func (r Rule) String() string {
	s := r.Match.String() + " " + r.Action.String()
	if r.Comment != "" {
		s += fmt.Sprintf(" comment %q", r.Comment)
	}
	return s
}

// String renders the match in nft syntax.
func (m Match) String() string {
	switch m.Kind {
	case MatchTCP:
		return "meta l4proto tcp"
	case MatchSocketUID:
		return fmt.Sprintf("meta skuid %d", m.UID)
	case MatchOutInterface:
		return fmt.Sprintf("oifname %q", m.Interface)
	case MatchDestination:
		return destinationString(m.Prefix)
	case MatchDestPorts:
		return "tcp dport " + m.Ports.String()
	}
	return fmt.Sprintf("<unknown match %d>", m.Kind)
}

func destinationString(p netip.Prefix) string {
	family, proto := "ip", "ipv4"
	if p.Addr().Is6() {
		family, proto = "ip6", "ipv6"
	}
	switch {
	case p.Bits() == 0:
		return "meta nfproto " + proto
	case p.IsSingleIP():
		return family + " daddr " + p.Addr().String()
	}
	return family + " daddr " + p.String()
}

// String renders the action in nft syntax.
func (a Action) String() string {
	switch a.Kind {
	case ActionReturn:
		return "return"
	case ActionRedirect:
		return fmt.Sprintf("redirect to :%d", a.Port)
	}
	return fmt.Sprintf("<unknown action %d>", a.Kind)
}
