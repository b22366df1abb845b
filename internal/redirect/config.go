// Package redirect programs the traffic redirect of a meshed pod: the workload's outbound TCP goes to the proxy's
// outbound port, TCP arriving for the workload goes to the proxy's inbound port, and the proxy's own traffic,
// loopback, ignored networks and skipped ports stay direct.
//
// Plan turns a Config into an abstract Ruleset (pure, table-tested); a Backend writes a Ruleset into the kernel:
// Nftables through netlink (the default) or IPTables through iptables-restore.
package redirect

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// MaxListEntries bounds each of Config's port and CIDR lists, so the ruleset stays small: every entry is one rule.
const MaxListEntries = 256

// Config says what to redirect. The zero value is not valid; start from DefaultConfig.
type Config struct {
	// OutboundPort receives the workload's outbound TCP. Default wellknown.OutboundPort (4140).
	OutboundPort uint16
	// InboundPort receives TCP addressed to the workload. Default wellknown.InboundPort (4143).
	InboundPort uint16
	// ProxyUID is the user the proxy runs as; sockets it owns are never redirected, which keeps the proxy's own
	// connections from looping back into it. Must not be 0 (root) or 4294967295. Default wellknown.ProxyUID (2102).
	ProxyUID uint32
	// ProxyPorts are ports the proxy serves directly to the network and that inbound traffic must reach unchanged,
	// such as the admin port that kubelet probes and Prometheus scrape. OutboundPort and InboundPort are always
	// added. Default [wellknown.AdminPort] (4191).
	ProxyPorts []uint16
	// SkipInboundPorts are destination ports whose inbound TCP bypasses the proxy. Default none.
	SkipInboundPorts []PortRange
	// SkipOutboundPorts are destination ports whose outbound TCP bypasses the proxy. Default none.
	SkipOutboundPorts []PortRange
	// IgnoredCIDRs are destination networks (IPv4 or IPv6) whose outbound TCP bypasses the proxy; host bits are
	// cleared. Default none.
	IgnoredCIDRs []netip.Prefix
}

// DefaultConfig returns the configuration of a standard sidecar: the well-known proxy ports and UID, nothing skipped.
func DefaultConfig() Config {
	return Config{
		OutboundPort: wellknown.OutboundPort,
		InboundPort:  wellknown.InboundPort,
		ProxyUID:     wellknown.ProxyUID,
		ProxyPorts:   []uint16{wellknown.AdminPort},
	}
}

// Validate reports every problem of c at once; nil means Plan accepts it.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.OutboundPort == 0 {
		add("outbound port must be between 1 and 65535")
	}
	if c.InboundPort == 0 {
		add("inbound port must be between 1 and 65535")
	}
	if c.OutboundPort != 0 && c.OutboundPort == c.InboundPort {
		add("outbound and inbound ports must differ (both are %d)", c.OutboundPort)
	}
	switch c.ProxyUID {
	case 0:
		add("proxy UID must not be 0: exempting root's traffic would leave most workloads unmeshed")
	case math.MaxUint32:
		add("proxy UID %d is not a user", c.ProxyUID)
	}
	if slices.Contains(c.ProxyPorts, 0) {
		add("proxy ports must be between 1 and 65535")
	}
	errs = append(errs, validateRanges("skipped inbound ports", c.SkipInboundPorts)...)
	errs = append(errs, validateRanges("skipped outbound ports", c.SkipOutboundPorts)...)
	errs = append(errs, validatePrefixes(c.IgnoredCIDRs)...)
	for _, l := range []struct {
		name string
		n    int
	}{{"proxy ports", len(c.ProxyPorts)}, {"skipped inbound ports", len(c.SkipInboundPorts)},
		{"skipped outbound ports", len(c.SkipOutboundPorts)}, {"ignored CIDRs", len(c.IgnoredCIDRs)}} {
		if l.n > MaxListEntries {
			add("%s: %d entries, at most %d are allowed", l.name, l.n, MaxListEntries)
		}
	}
	return errors.Join(errs...)
}

func validateRanges(what string, ranges []PortRange) []error {
	var errs []error
	for _, r := range ranges {
		if err := r.validate(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	return errs
}

func validatePrefixes(prefixes []netip.Prefix) []error {
	var errs []error
	for _, p := range prefixes {
		switch {
		case !p.IsValid():
			errs = append(errs, errors.New("ignored CIDRs: invalid prefix"))
		case p.Addr().Is4In6():
			errs = append(errs, fmt.Errorf("ignored CIDRs: %s: IPv4-mapped IPv6 never appears on the wire; use the IPv4 form", p))
		}
	}
	return errs
}

// PortRange is an inclusive range of TCP ports; First == Last is a single port.
type PortRange struct {
	// First is the lowest port of the range (1-65535).
	First uint16
	// Last is the highest port of the range (First-65535).
	Last uint16
}

// Port returns the range holding the single port p.
func Port(p uint16) PortRange { return PortRange{First: p, Last: p} }

// String formats the range as "80" or "8000-8100".
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

func (r PortRange) validate() error {
	if r.First == 0 || r.Last == 0 {
		return fmt.Errorf("%s: ports must be between 1 and 65535", r)
	}
	if r.First > r.Last {
		return fmt.Errorf("%s: the range is reversed", r)
	}
	return nil
}

// ParsePortRanges parses a comma-separated list of ports and inclusive ranges, e.g. "25, 3306,8000-8100". Blank items
// are ignored; an empty string gives an empty list.
func ParsePortRanges(s string) ([]PortRange, error) {
	var out []PortRange
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		r, err := parsePortRange(item)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func parsePortRange(item string) (PortRange, error) {
	first, last, isRange := strings.Cut(item, "-")
	if !isRange {
		p, err := parsePort(item)
		return Port(p), err
	}
	lo, err := parsePort(first)
	if err != nil {
		return PortRange{}, fmt.Errorf("range %q: %w", item, err)
	}
	hi, err := parsePort(last)
	if err != nil {
		return PortRange{}, fmt.Errorf("range %q: %w", item, err)
	}
	r := PortRange{First: lo, Last: hi}
	return r, r.validate()
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", strings.TrimSpace(s))
	}
	return uint16(n), nil
}

// ParsePrefixes parses a comma-separated list of IPv4 and IPv6 networks in CIDR notation, e.g.
// "10.0.0.0/8,fd00::/8". A bare address means that one host (/32 or /128). Blank items are ignored.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		p, err := parsePrefix(item)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func parsePrefix(item string) (netip.Prefix, error) {
	if !strings.Contains(item, "/") {
		a, err := netip.ParseAddr(item)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", item)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(item)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", item)
	}
	return p, nil
}
