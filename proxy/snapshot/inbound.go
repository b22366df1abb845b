package snapshot

import (
	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/authz"
)

// compileInbound resolves the document's inbound section for the pod described by o: the settings of every listed
// port (from the workload entries that select the pod, else inbound.ports) and of the other ports.
func compileInbound(c *proxyconfig.Config, o Options) (map[uint16]*InboundPort, *authz.Table, error) {
	t, err := authz.Compile(c.Inbound, authz.CompileOptions{Namespace: o.PodNamespace, Labels: o.PodLabels,
		TrustDomain: o.TrustDomain, Matches: compileInboundMatches})
	if err != nil {
		return nil, nil, err
	}
	ports := map[uint16]*InboundPort{}
	for _, p := range t.Ports() {
		ports[p.Port] = &InboundPort{Port: p.Port, Name: p.Name, Opaque: p.Protocol == proxyconfig.ProtocolOpaque,
			DefaultPolicy: p.Policy.DefaultPolicy, Authz: p.Policy}
	}
	return ports, t, nil
}

// inboundMatches are an inbound route's compiled matches: a request meets the route when it meets any of them, or
// always when there are none.
type inboundMatches []match

var _ authz.Matcher = inboundMatches(nil)

// Matches implements authz.Matcher.
func (ms inboundMatches) Matches(r authz.HTTPRequest) bool {
	if len(ms) == 0 {
		return true
	}
	for i := range ms {
		if ms[i].matches(r) {
			return true
		}
	}
	return false
}

func compileInboundMatches(in []proxyconfig.Match) (authz.Matcher, error) {
	ms := make(inboundMatches, 0, len(in))
	for _, m := range in {
		cm, err := compileMatch(m)
		if err != nil {
			return nil, err
		}
		ms = append(ms, cm)
	}
	return ms, nil
}

// Authz returns the authorization settings of an inbound port.
func (s *Snapshot) Authz(port uint16) *authz.Policy {
	if p := s.inbound[port]; p != nil && p.Authz != nil {
		return p.Authz
	}
	if s.inboundOther != nil {
		return s.inboundOther
	}
	return nil
}
