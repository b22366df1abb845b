// Package accrual takes failing endpoints out of load balancing and probes them back, around any balance.Builder.
//
// Each endpoint (by address) is in one of three states:
//
//	Healthy --N consecutive failures--> Ejected --backoff expired, next pick--> Probing
//	Probing --probe succeeds--> Healthy (failure count and backoff reset)
//	Probing --probe fails--> Ejected (longer backoff)        Probing --probe canceled--> Ejected (probe again at once)
//
// Failures are counted from the DoneInfo of every request picked while the endpoint is Healthy: DoneInfo.Failure
// (Err set or Failed) is a failure, any other outcome not Canceled is a success and resets the count, Canceled
// outcomes are ignored. The inner Picker only sees Healthy endpoints. An Ejected endpoint whose backoff has expired is
// probed with the next real request any Picker of the Builder makes (the probe bypasses the inner Picker), one probe
// at a time across the Builder; the probe's outcome alone decides the next state.
//
// The k-th consecutive ejection (k = 0, 1, …, reset by a recovery) lasts a random duration with equal jitter,
//
//	ceiling = min(MaxBackoff, MinBackoff × 2^(k+1))
//	backoff = ceiling/2 + uniform[0, ceiling/2], kept within [MinBackoff, MaxBackoff]
//
// so 1–2 s, 2–4 s, 4–8 s, … up to 30–60 s with the defaults.
//
// Panic mode: when every endpoint of a Picker is out of rotation (Ejected or Probing), the Picker picks among all its
// endpoints with the inner Picker rather than failing every request, and counts such picks in Stats.PanicPicks.
// Outcomes of panic picks do not change any state; only probes do.
//
// State belongs to the Builder, keyed by address, and survives reloads (see balance.States).
package accrual

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
)

// Linkerd's defaults.
const (
	// DefaultConsecutiveFailures ejects an endpoint after this many failures in a row.
	DefaultConsecutiveFailures = 7
	// DefaultMinBackoff is the first ejection's lower bound.
	DefaultMinBackoff = time.Second
	// DefaultMaxBackoff caps every ejection.
	DefaultMaxBackoff = time.Minute
)

// State is an endpoint's failure-accrual state.
type State int32

// States of an endpoint.
const (
	// Healthy endpoints are in rotation.
	Healthy State = iota
	// Ejected endpoints are out of rotation until their backoff expires.
	Ejected
	// Probing endpoints are out of rotation with one probe request in flight.
	Probing
)

// String returns the state's name in lower case.
func (s State) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Ejected:
		return "ejected"
	case Probing:
		return "probing"
	}
	return fmt.Sprintf("State(%d)", int32(s))
}

// Observer is told of every state change. Calls are made synchronously, outside locks, by the Pick or done call that
// caused the change: an Observer must be quick and safe for concurrent use.
type Observer interface {
	// Transition reports that the endpoint at addr went from one state to another; backoff is the ejection period
	// when to is Ejected, zero otherwise.
	Transition(addr netip.AddrPort, from, to State, backoff time.Duration)
}

// Options configures a Builder. The zero value gives Linkerd's defaults.
type Options struct {
	// ConsecutiveFailures ejects an endpoint after this many failures in a row. Default 7.
	ConsecutiveFailures int
	// MinBackoff is the lower bound of the first ejection. Default 1s.
	MinBackoff time.Duration
	// MaxBackoff caps every ejection. Default 60s (at least MinBackoff).
	MaxBackoff time.Duration
	// Observer, when set, is told of state changes. Default none.
	Observer Observer
	// Retain is how long an endpoint's state outlives the last Picker that used it. Default balance.DefaultRetain.
	Retain time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Int64N returns a uniform random int64 in [0, n) for jitter; it must be safe for concurrent use. Default
	// math/rand/v2.Int64N.
	Int64N func(n int64) int64
}

// Stats are the Builder's counters, for metrics.
type Stats struct {
	// Ejected is the number of endpoints currently out of rotation (Ejected or Probing): a gauge.
	Ejected int
	// Ejections counts transitions to Ejected, after consecutive failures or a failed probe.
	Ejections uint64
	// Probes counts probe requests sent.
	Probes uint64
	// Recoveries counts successful probes (transitions back to Healthy).
	Recoveries uint64
	// PanicPicks counts picks made among all endpoints because every endpoint was out of rotation.
	PanicPicks uint64
}

// Builder wraps an inner balance.Builder with failure accrual. It is safe for concurrent use.
type Builder struct {
	inner     balance.Builder
	threshold int64
	min, max  time.Duration
	obs       Observer
	nanos     func() int64
	int64n    func(int64) int64
	states    *balance.States[endpoint]
	calls     sync.Pool // *call

	// epoch changes with every state transition of any endpoint; Pickers compare it to decide whether to look at
	// their endpoints again.
	epoch                                    atomic.Uint64
	ejections, probes, recoveries, panicking atomic.Uint64
}

// NewBuilder returns a Builder whose Pickers choose among healthy endpoints with inner.
func NewBuilder(inner balance.Builder, o Options) *Builder {
	if o.ConsecutiveFailures <= 0 {
		o.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.Int64N == nil {
		o.Int64N = rand.Int64N
	}
	b := &Builder{inner: inner, threshold: int64(o.ConsecutiveFailures), min: o.MinBackoff, max: o.MaxBackoff,
		obs: o.Observer, nanos: elapsed(o.Now), int64n: o.Int64N}
	b.states = balance.NewStates(balance.StatesOptions[endpoint]{New: b.newEndpoint, Retain: o.Retain, Now: o.Now})
	b.calls.New = func() any {
		c := &call{pool: &b.calls}
		c.fn = c.done
		return c
	}
	return b
}

// elapsed returns a clock reading nanoseconds since the call: on now when set, else on the monotonic clock alone
// (time.Since skips the wall clock, about half the cost of time.Now).
func elapsed(now func() time.Time) func() int64 {
	if now == nil {
		start := time.Now()
		return func() int64 { return int64(time.Since(start)) }
	}
	start := now()
	return func() int64 { return int64(now().Sub(start)) }
}

// Backoff returns the duration of the k-th consecutive ejection (k from 0): equal jitter over
// min(MaxBackoff, MinBackoff×2^(k+1)), kept within [MinBackoff, MaxBackoff].
func (b *Builder) Backoff(k int) time.Duration {
	ceiling := b.min
	for i := 0; i <= k && ceiling < b.max; i++ {
		if ceiling > b.max/2 {
			ceiling = b.max
			break
		}
		ceiling *= 2
	}
	ceiling = min(ceiling, b.max)
	half := ceiling / 2
	return min(max(half+time.Duration(b.int64n(int64(ceiling-half)+1)), b.min), b.max)
}

// Stats returns the builder's counters; Ejected is counted over the endpoints the builder keeps state for.
func (b *Builder) Stats() Stats {
	s := Stats{Ejections: b.ejections.Load(), Probes: b.probes.Load(), Recoveries: b.recoveries.Load(),
		PanicPicks: b.panicking.Load()}
	b.states.Range(func(_ netip.AddrPort, e *endpoint) bool {
		if State(e.state.Load()) != Healthy {
			s.Ejected++
		}
		return true
	})
	return s
}

// State returns the state of the endpoint at addr and whether the builder keeps state for it.
func (b *Builder) State(addr netip.AddrPort) (State, bool) {
	e, ok := b.states.Get(addr)
	if !ok {
		return Healthy, false
	}
	return State(e.state.Load()), true
}

// Build returns a Picker over endpoints; it implements balance.Builder.
func (b *Builder) Build(endpoints []*balance.Endpoint) balance.Picker {
	p := &picker{b: b, eps: endpoints, index: make(map[*balance.Endpoint]*endpoint, len(endpoints))}
	if len(endpoints) == 0 {
		return p
	}
	p.states = balance.Acquire(b.states, p, endpoints)
	for i, ep := range endpoints {
		p.index[ep] = p.states[i]
	}
	p.seen.Store(b.epoch.Load())
	p.view.Store(p.build(p.sig()))
	return p
}

// endpoint is the accrual state of one address. state, failures and until are read without locking; transitions
// take mu.
type endpoint struct {
	b        *Builder
	addr     netip.AddrPort
	state    atomic.Int32 // a State
	failures atomic.Int64 // consecutive failures while Healthy
	until    atomic.Int64 // builder nanos when an Ejected endpoint may be probed
	gen      atomic.Uint64
	mu       sync.Mutex
	level    int // consecutive ejections since the last recovery; guarded by mu
	probed   func(balance.DoneInfo)
}

func (b *Builder) newEndpoint(ep *balance.Endpoint) *endpoint {
	e := &endpoint{b: b, addr: ep.Addr}
	e.probed = e.probeDone
	return e
}

// record accounts for the outcome of a request picked while e was Healthy.
func (e *endpoint) record(d balance.DoneInfo) {
	if d.Canceled || State(e.state.Load()) != Healthy {
		return
	}
	if !d.Failure() {
		if e.failures.Load() != 0 {
			e.failures.Store(0)
		}
		return
	}
	if e.failures.Add(1) == e.b.threshold {
		e.eject(Healthy, false)
	}
}

// eject moves e from the given state to Ejected; again keeps the backoff level (a canceled probe) instead of raising
// it.
func (e *endpoint) eject(from State, again bool) {
	b := e.b
	e.mu.Lock()
	if State(e.state.Load()) != from {
		e.mu.Unlock()
		return
	}
	var backoff time.Duration
	if !again {
		backoff = b.Backoff(e.level)
		e.level++
	}
	e.until.Store(b.nanos() + int64(backoff))
	e.state.Store(int32(Ejected))
	e.gen.Add(1)
	e.mu.Unlock()
	if !again {
		b.ejections.Add(1)
	}
	b.epoch.Add(1)
	if b.obs != nil {
		b.obs.Transition(e.addr, from, Ejected, backoff)
	}
}

// tryProbe moves e from Ejected to Probing if its backoff has expired at now.
func (e *endpoint) tryProbe(now int64) bool {
	b := e.b
	e.mu.Lock()
	if State(e.state.Load()) != Ejected || now < e.until.Load() {
		e.mu.Unlock()
		return false
	}
	e.state.Store(int32(Probing))
	e.gen.Add(1)
	e.mu.Unlock()
	b.probes.Add(1)
	b.epoch.Add(1)
	if b.obs != nil {
		b.obs.Transition(e.addr, Ejected, Probing, 0)
	}
	return true
}

// probeDone is the done callback of a probe.
func (e *endpoint) probeDone(d balance.DoneInfo) {
	switch {
	case d.Canceled:
		e.eject(Probing, true)
	case d.Failure():
		e.eject(Probing, false)
	default:
		e.restore()
	}
}

// restore moves e from Probing back to Healthy and resets its failure count and backoff.
func (e *endpoint) restore() {
	b := e.b
	e.mu.Lock()
	if State(e.state.Load()) != Probing {
		e.mu.Unlock()
		return
	}
	e.level = 0
	e.failures.Store(0)
	e.state.Store(int32(Healthy))
	e.gen.Add(1)
	e.mu.Unlock()
	b.recoveries.Add(1)
	b.epoch.Add(1)
	if b.obs != nil {
		b.obs.Transition(e.addr, Probing, Healthy, 0)
	}
}

// call carries one pick's accounting to its done callback; calls are pooled so that a pick does not allocate.
type call struct {
	e     *endpoint
	inner func(balance.DoneInfo)
	fn    func(balance.DoneInfo) // c.done, bound once
	pool  *sync.Pool
}

func (c *call) done(d balance.DoneInfo) {
	e, inner := c.e, c.inner
	c.e, c.inner = nil, nil
	c.pool.Put(c)
	inner(d)
	if e != nil {
		e.record(d)
	}
}

// view is what a Picker picks from, rebuilt when one of its endpoints changes state.
type view struct {
	inner     balance.Picker // over the Healthy endpoints, or all of them in panic mode
	panic     bool
	suspended []int  // indexes of endpoints out of rotation when the view was built
	probeAt   int64  // earliest end of backoff among Ejected endpoints, when hasProbe
	hasProbe  bool   // some endpoint was Ejected
	sig       uint64 // sum of the endpoints' generations the view reflects
}

type picker struct {
	b      *Builder
	eps    []*balance.Endpoint
	states []*endpoint // states[i] is the state of eps[i]
	index  map[*balance.Endpoint]*endpoint
	view   atomic.Pointer[view]
	seen   atomic.Uint64 // builder epoch last compared with the view
	mu     sync.Mutex    // serialises refresh
}

var _ balance.Picker = (*picker)(nil)

// Pick sends a due probe if there is one, else picks with the inner Picker among healthy endpoints (all endpoints in
// panic mode).
func (p *picker) Pick() (*balance.Endpoint, func(balance.DoneInfo), error) {
	if len(p.eps) == 0 {
		return nil, balance.NoopDone, balance.ErrNoEndpoints
	}
	v := p.view.Load()
	if p.b.epoch.Load() != p.seen.Load() {
		v = p.refresh()
	}
	if v.hasProbe {
		if now := p.b.nanos(); now >= v.probeAt {
			for _, i := range v.suspended {
				if e := p.states[i]; e.tryProbe(now) {
					return p.eps[i], e.probed, nil
				}
			}
		}
	}
	ep, done, err := v.inner.Pick()
	if err != nil {
		return ep, done, err
	}
	if v.panic {
		p.b.panicking.Add(1)
		return ep, done, nil
	}
	c := p.b.calls.Get().(*call)
	c.e, c.inner = p.index[ep], done
	return ep, c.fn, nil
}

// refresh rebuilds the view if one of the picker's endpoints changed state since it was built. A Pick that finds
// another refresh under way waits for it, so that no pick after an ejection uses a view that still holds the ejected
// endpoint; the wait happens only on state changes, which are rare.
func (p *picker) refresh() *view {
	p.mu.Lock()
	defer p.mu.Unlock()
	epoch := p.b.epoch.Load() // before sig: a later change moves the epoch past what is recorded as seen
	v := p.view.Load()
	if epoch == p.seen.Load() {
		return v // refreshed by the Pick this one waited for
	}
	if sig := p.sig(); sig != v.sig {
		v = p.build(sig)
		p.view.Store(v)
	}
	p.seen.Store(epoch)
	return v
}

// sig sums the generations of the picker's endpoints; it changes whenever one of them changes state.
func (p *picker) sig() uint64 {
	var s uint64
	for _, e := range p.states {
		s += e.gen.Load()
	}
	return s
}

func (p *picker) build(sig uint64) *view {
	v := &view{sig: sig}
	healthy := make([]*balance.Endpoint, 0, len(p.eps))
	for i, e := range p.states {
		switch State(e.state.Load()) {
		case Healthy:
			healthy = append(healthy, p.eps[i])
		case Ejected:
			v.suspended = append(v.suspended, i)
			if until := e.until.Load(); !v.hasProbe || until < v.probeAt {
				v.probeAt, v.hasProbe = until, true
			}
		default:
			v.suspended = append(v.suspended, i)
		}
	}
	switch len(healthy) {
	case len(p.eps):
		healthy = p.eps
	case 0:
		v.panic, healthy = true, p.eps
	}
	v.inner = p.b.inner(healthy)
	return v
}
