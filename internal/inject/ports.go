package inject

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// PortRange is an inclusive range of TCP ports; a single port has Lo == Hi.
type PortRange struct {
	// Lo is the first port of the range, 1-65535.
	Lo int32
	// Hi is the last port of the range, Lo-65535.
	Hi int32
}

// Ports is a set of TCP ports kept as sorted ranges; overlapping ranges are merged, adjacent ones are not, so a
// set built from single ports prints as single ports. Its text form, used by the pod annotations, the proxy-init
// flags and the proxy's environment, is a comma-separated list of ports and ranges: "25,8000-8100".
type Ports []PortRange

// PortsOf returns the set of the given ports.
func PortsOf(ports []int32) Ports {
	if len(ports) == 0 {
		return nil
	}
	rs := make(Ports, 0, len(ports))
	for _, p := range ports {
		rs = append(rs, PortRange{Lo: p, Hi: p})
	}
	return rs.normalize()
}

// ParsePorts parses the text form of Ports. Spaces around items are ignored; an empty string is the empty set.
func ParsePorts(s string) (Ports, error) {
	var rs Ports
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(item, "-")
		a, err := parsePort(lo)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		b := a
		if isRange {
			if b, err = parsePort(hi); err != nil {
				return nil, fmt.Errorf("%q: %w", item, err)
			}
			if b < a {
				return nil, fmt.Errorf("%q: the range ends before it starts", item)
			}
		}
		rs = append(rs, PortRange{Lo: a, Hi: b})
	}
	return rs.normalize(), nil
}

func parsePort(s string) (int32, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port (1-65535)", s)
	}
	return int32(n), nil
}

// normalize sorts and merges overlapping ranges.
func (ps Ports) normalize() Ports {
	if len(ps) == 0 {
		return nil
	}
	sorted := append(Ports(nil), ps...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Lo < sorted[j].Lo })
	out := Ports{sorted[0]}
	for _, r := range sorted[1:] {
		last := &out[len(out)-1]
		if r.Lo <= last.Hi {
			last.Hi = max(last.Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Union returns the ports of ps and o.
func (ps Ports) Union(o Ports) Ports {
	return append(append(Ports(nil), ps...), o...).normalize()
}

// Contains reports whether port is in the set.
func (ps Ports) Contains(port int32) bool {
	for _, r := range ps {
		if port >= r.Lo && port <= r.Hi {
			return true
		}
	}
	return false
}

// String returns the text form: "25,587,8000-8100", or "" for the empty set.
func (ps Ports) String() string {
	items := make([]string, 0, len(ps))
	for _, r := range ps {
		if r.Lo == r.Hi {
			items = append(items, strconv.Itoa(int(r.Lo)))
		} else {
			items = append(items, fmt.Sprintf("%d-%d", r.Lo, r.Hi))
		}
	}
	return strings.Join(items, ",")
}
