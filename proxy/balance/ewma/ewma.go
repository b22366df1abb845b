// Package ewma picks endpoints by the power of two choices over peak-EWMA latency, as Linkerd and Finagle do: each
// pick draws two distinct endpoints at random and takes the one with the lower cost, where
//
//	cost = estimate × (pending + 1)
//
// pending is the number of requests in flight on the endpoint and estimate its peak exponentially weighted moving
// average latency. The estimate decays towards zero with time constant Decay between samples (an endpoint that has not
// been heard from for a while becomes attractive again) and takes each sample r at time t, Δ after the previous one,
// as
//
//	current = estimate × e^(−Δ/Decay)
//	estimate = r                                  if r > current (peak: a slow response counts at once)
//	estimate = current + r × (1 − e^(−Δ/Decay))   otherwise
//
// so that steady samples r converge to r with time constant Decay. An endpoint seen for the first time starts at the
// mean of the current estimates of the other endpoints of the Picker it joins (a new endpoint of a warm backend
// competes at once instead of waiting for DefaultRTT to decay below its peers), or at DefaultRTT when it has none.
// Failed and canceled exchanges only raise the estimate, never lower it: a fast failure must not make an endpoint look
// attractive (failure accrual, package accrual, takes it out of rotation). A DoneInfo without Latency is no sample.
//
// Per-endpoint state (estimate, pending count) belongs to the Builder, keyed by address, and survives reloads.
package ewma

import (
	"math"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
)

// Linkerd's defaults.
const (
	// DefaultRTT is the estimate of a new endpoint that has no established peers.
	DefaultRTT = 30 * time.Millisecond
	// DefaultDecay is the time constant of the estimate's decay.
	DefaultDecay = 10 * time.Second
)

// Options configures a Builder. The zero value gives Linkerd's defaults.
type Options struct {
	// DefaultRTT is the latency estimate of a new endpoint of a backend whose other endpoints are all new too.
	// Default DefaultRTT (30ms).
	DefaultRTT time.Duration
	// Decay is the time constant over which old samples lose weight (to 1/e after Decay). Default DefaultDecay (10s).
	Decay time.Duration
	// Retain is how long an endpoint's state outlives the last Picker that used it. Default balance.DefaultRetain.
	Retain time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// IntN returns a uniform random int in [0, n); it must be safe for concurrent use. Default math/rand/v2.IntN.
	IntN func(n int) int
}

// Builder makes peak-EWMA Pickers sharing per-endpoint state. It is safe for concurrent use.
type Builder struct {
	defaultRTT float64 // nanoseconds
	tau        float64 // nanoseconds
	nanos      func() int64
	intn       func(int) int
	states     *balance.States[endpoint]
}

// NewBuilder returns a Builder with o's settings.
func NewBuilder(o Options) *Builder {
	if o.DefaultRTT <= 0 {
		o.DefaultRTT = DefaultRTT
	}
	if o.Decay <= 0 {
		o.Decay = DefaultDecay
	}
	if o.IntN == nil {
		o.IntN = rand.IntN
	}
	b := &Builder{defaultRTT: float64(o.DefaultRTT), tau: float64(o.Decay), nanos: elapsed(o.Now), intn: o.IntN}
	b.states = balance.NewStates(balance.StatesOptions[endpoint]{
		New:    b.newEndpoint,
		Idle:   func(e *endpoint) bool { return e.pending.Load() == 0 },
		Retain: o.Retain,
		Now:    o.Now,
	})
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

// Build returns a Picker over endpoints; it implements balance.Builder. Endpoints seen for the first time start at
// the mean of the current estimates of the others (see seed).
func (b *Builder) Build(endpoints []*balance.Endpoint) balance.Picker {
	p := &picker{b: b, eps: endpoints}
	p.states = balance.Acquire(b.states, p, endpoints)
	b.seed(p.states)
	return p
}

// seed sets the estimate of each new state of states to the mean of the current estimates of the established ones,
// or to DefaultRTT when there are none, and marks it established. A state that a concurrent Build seeded first keeps
// its estimate. Build seeds every state before it returns the Picker, so no pick sees a fresh state.
func (b *Builder) seed(states []*endpoint) {
	fresh, n, sum := 0, 0, 0.0
	now := b.nanos()
	for _, e := range states {
		if e.fresh.Load() {
			fresh++
			continue
		}
		sum += e.estimate(now)
		n++
	}
	if fresh == 0 {
		return
	}
	est := b.defaultRTT
	if n > 0 {
		est = sum / float64(n)
	}
	for _, e := range states {
		if e.fresh.Load() {
			e.establish(est, now)
		}
	}
}

// Estimate returns the current latency estimate (decayed to now) and requests in flight of the endpoint at addr, and
// whether the builder has state for it.
func (b *Builder) Estimate(addr netip.AddrPort) (rtt time.Duration, pending int64, ok bool) {
	e, ok := b.states.Get(addr)
	if !ok {
		return 0, 0, false
	}
	return time.Duration(e.estimate(b.nanos())), e.pending.Load(), true
}

// endpoint is the state of one address. est and stamp form a pair written under mu and published with a sequence
// lock, so picks read them without locking.
type endpoint struct {
	b       *Builder
	pending atomic.Int64
	mu      sync.Mutex    // serialises writers
	seq     atomic.Uint64 // odd while a writer updates est and stamp
	est     atomic.Uint64 // float64 bits: estimate in nanoseconds as of stamp
	stamp   atomic.Int64  // builder nanos of the last update
	fresh   atomic.Bool   // not yet seeded by a Build; cleared under mu
	done    func(balance.DoneInfo)
}

func (b *Builder) newEndpoint(*balance.Endpoint) *endpoint {
	e := &endpoint{b: b}
	e.est.Store(math.Float64bits(b.defaultRTT))
	e.stamp.Store(b.nanos())
	e.fresh.Store(true)
	e.done = e.observe
	return e
}

// establish sets a fresh endpoint's estimate as of now; it does nothing to an endpoint no longer fresh.
func (e *endpoint) establish(est float64, now int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.fresh.Load() {
		return
	}
	e.store(est, max(now, e.stamp.Load()))
	e.fresh.Store(false)
}

// store publishes an (estimate, stamp) pair; the caller holds mu.
func (e *endpoint) store(est float64, stamp int64) {
	e.seq.Add(1)
	e.est.Store(math.Float64bits(est))
	e.stamp.Store(stamp)
	e.seq.Add(1)
}

// load returns a consistent (estimate, stamp) pair.
func (e *endpoint) load() (float64, int64) {
	for spins := 0; ; spins++ {
		if q := e.seq.Load(); q&1 == 0 {
			est, stamp := e.est.Load(), e.stamp.Load()
			if e.seq.Load() == q {
				return math.Float64frombits(est), stamp
			}
		}
		if spins > 8 {
			runtime.Gosched() // a writer was preempted mid-update
		}
	}
}

// decay returns e^(−Δ/τ) for the time from stamp to now (1 when now is not after stamp).
func (b *Builder) decay(stamp, now int64) float64 {
	if now <= stamp {
		return 1
	}
	return exp(-float64(now-stamp) / b.tau)
}

// exp is math.Exp with a short cut for the tiny exponents of busy endpoints (samples microseconds apart against a
// decay of seconds), where the series 1 + x + x²/2 is exact to 2e-10.
func exp(x float64) float64 {
	if x > -1e-3 && x < 1e-3 {
		return 1 + x + x*x/2
	}
	return math.Exp(x)
}

// estimate returns the estimate decayed to now, in nanoseconds.
func (e *endpoint) estimate(now int64) float64 {
	est, stamp := e.load()
	return est * e.b.decay(stamp, now)
}

// cheaper reports whether a costs less than c now. Both estimates decay by the same factor from the later of their
// stamps to now, so comparing them at that stamp gives the same answer and needs no clock:
//
//	cost_a(now) < cost_c(now)  ⇔  est_a × (pending_a+1) × e^((stamp_a − stamp_c)/Decay) < est_c × (pending_c+1)
func (b *Builder) cheaper(a, c *endpoint) bool {
	ea, sa := a.load()
	ec, sc := c.load()
	return ea*float64(a.pending.Load()+1)*exp(float64(sa-sc)/b.tau) < ec*float64(c.pending.Load()+1)
}

// observe is the done callback of a pick of e.
func (e *endpoint) observe(d balance.DoneInfo) {
	e.pending.Add(-1)
	if d.Latency <= 0 {
		return
	}
	rtt := float64(d.Latency)
	b := e.b
	now := b.nanos()
	e.mu.Lock()
	defer e.mu.Unlock()
	est, stamp := math.Float64frombits(e.est.Load()), e.stamp.Load()
	w := b.decay(stamp, now)
	cur := est * w
	var next float64
	switch {
	case rtt > cur:
		next = rtt
	case d.Canceled || d.Failure():
		return // a lower bound below the estimate says nothing
	default:
		next = cur + rtt*(1-w)
	}
	e.store(next, max(now, stamp))
}

type picker struct {
	b      *Builder
	eps    []*balance.Endpoint
	states []*endpoint // states[i] is the state of eps[i]
}

var _ balance.Picker = (*picker)(nil)

// Pick returns the cheaper of two distinct random endpoints (the only one when there is one).
func (p *picker) Pick() (*balance.Endpoint, func(balance.DoneInfo), error) {
	var i int
	switch n := len(p.eps); n {
	case 0:
		return nil, balance.NoopDone, balance.ErrNoEndpoints
	case 1:
	default:
		i = p.b.intn(n)
		j := p.b.intn(n - 1)
		if j >= i {
			j++
		}
		if p.b.cheaper(p.states[j], p.states[i]) {
			i = j
		}
	}
	e := p.states[i]
	e.pending.Add(1)
	return p.eps[i], e.done, nil
}
