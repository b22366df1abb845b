// Package roundrobin picks endpoints in turn.
package roundrobin

import (
	"sync/atomic"

	"github.com/trellis-mesh/trellis/proxy/balance"
)

type picker struct {
	endpoints []*balance.Endpoint
	next      atomic.Uint64
}

var _ balance.Picker = (*picker)(nil)

// New returns a Picker that cycles through endpoints in order. It keeps no per-endpoint state.
func New(endpoints []*balance.Endpoint) balance.Picker {
	return &picker{endpoints: endpoints}
}

// Pick returns the next endpoint in turn.
func (p *picker) Pick() (*balance.Endpoint, func(balance.DoneInfo), error) {
	n := uint64(len(p.endpoints))
	if n == 0 {
		return nil, balance.NoopDone, balance.ErrNoEndpoints
	}
	i := (p.next.Add(1) - 1) % n
	return p.endpoints[i], balance.NoopDone, nil
}
