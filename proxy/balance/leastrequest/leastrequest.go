// Package leastrequest picks endpoints by the power of two choices over requests in flight: each pick draws two
// distinct endpoints at random and takes the one with fewer requests in flight (the first drawn on a tie). It needs no
// clock and ignores latency and outcome.
//
// The in-flight counts belong to the Builder, keyed by address, so requests started on an old snapshot's Picker still
// count against the endpoint on the new one.
package leastrequest

import (
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
)

// Options configures a Builder. The zero value is ready to use.
type Options struct {
	// Retain is how long an endpoint's state outlives the last Picker that used it. Default balance.DefaultRetain.
	Retain time.Duration
	// Now is the clock used for Retain. Default time.Now.
	Now func() time.Time
	// IntN returns a uniform random int in [0, n); it must be safe for concurrent use. Default math/rand/v2.IntN.
	IntN func(n int) int
}

// Builder makes least-request Pickers sharing per-endpoint in-flight counts. It is safe for concurrent use.
type Builder struct {
	intn   func(int) int
	states *balance.States[endpoint]
}

// NewBuilder returns a Builder with o's settings.
func NewBuilder(o Options) *Builder {
	if o.IntN == nil {
		o.IntN = rand.IntN
	}
	return &Builder{intn: o.IntN, states: balance.NewStates(balance.StatesOptions[endpoint]{
		New: func(*balance.Endpoint) *endpoint {
			e := &endpoint{}
			e.done = e.finish
			return e
		},
		Idle:   func(e *endpoint) bool { return e.pending.Load() == 0 },
		Retain: o.Retain,
		Now:    o.Now,
	})}
}

// Build returns a Picker over endpoints; it implements balance.Builder.
func (b *Builder) Build(endpoints []*balance.Endpoint) balance.Picker {
	p := &picker{intn: b.intn, eps: endpoints}
	p.states = balance.Acquire(b.states, p, endpoints)
	return p
}

// Pending returns the requests in flight on the endpoint at addr, and whether the builder has state for it.
func (b *Builder) Pending(addr netip.AddrPort) (int64, bool) {
	e, ok := b.states.Get(addr)
	if !ok {
		return 0, false
	}
	return e.pending.Load(), true
}

type endpoint struct {
	pending atomic.Int64
	done    func(balance.DoneInfo)
}

func (e *endpoint) finish(balance.DoneInfo) { e.pending.Add(-1) }

type picker struct {
	intn   func(int) int
	eps    []*balance.Endpoint
	states []*endpoint // states[i] is the state of eps[i]
}

var _ balance.Picker = (*picker)(nil)

// Pick returns the less loaded of two distinct random endpoints (the only one when there is one).
func (p *picker) Pick() (*balance.Endpoint, func(balance.DoneInfo), error) {
	var i int
	switch n := len(p.eps); n {
	case 0:
		return nil, balance.NoopDone, balance.ErrNoEndpoints
	case 1:
	default:
		i = p.intn(n)
		j := p.intn(n - 1)
		if j >= i {
			j++
		}
		if p.states[j].pending.Load() < p.states[i].pending.Load() {
			i = j
		}
	}
	e := p.states[i]
	e.pending.Add(1)
	return p.eps[i], e.done, nil
}
