package balance

import (
	"net/netip"
	"runtime"
	"sync"
	"time"
)

// DefaultRetain is how long States keeps the state of an endpoint that no live Picker uses any more. It is longer than
// the default peak-EWMA decay (10 s) and failure-accrual maximum backoff (60 s), so an endpoint that leaves the
// configuration and comes back within it keeps all that matters of its history.
const DefaultRetain = time.Minute

// StatesOptions configures States.
type StatesOptions[S any] struct {
	// New creates the state of an endpoint seen for the first time, or again after its state was dropped. Required.
	New func(ep *Endpoint) *S
	// Idle reports whether a state may be dropped, typically when no request is in flight on it. Default: always.
	Idle func(s *S) bool
	// Retain is how long a state no live Picker references is kept before it is dropped. Default DefaultRetain; a
	// negative value drops it at the first sweep after its release.
	Retain time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// States holds a Builder's per-endpoint state of type S, keyed by endpoint address, outside any Picker so that it
// survives reloads: a Picker built for a new snapshot with an address already known gets the same *S.
//
// Lifetime: Acquire ties the states of a Picker's endpoints to that Picker. When the Picker becomes unreachable (its
// snapshot was replaced and its last request finished) the garbage collector releases its references. A state with
// no references left is dropped once it has been unreferenced for Retain and Idle reports true; sweeps run on every
// Acquire and on Sweep. States is safe for concurrent use.
type States[S any] struct {
	o        StatesOptions[S]
	mu       sync.Mutex
	m        map[netip.AddrPort]*stateEntry[S]
	released []*stateEntry[S] // entries whose references dropped to zero, candidates for removal
}

type stateEntry[S any] struct {
	addr       netip.AddrPort
	s          *S
	refs       int
	releasedAt time.Time
	listed     bool // in States.released
}

// NewStates returns an empty States.
func NewStates[S any](o StatesOptions[S]) *States[S] {
	if o.New == nil {
		panic("balance: StatesOptions.New is required")
	}
	if o.Idle == nil {
		o.Idle = func(*S) bool { return true }
	}
	if o.Retain == 0 {
		o.Retain = DefaultRetain
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &States[S]{o: o, m: map[netip.AddrPort]*stateEntry[S]{}}
}

// Acquire returns the state of each endpoint of eps, in order, creating missing ones, and holds a reference to each
// for as long as owner (the Picker that will use them) is reachable.
func Acquire[T, S any](r *States[S], owner *T, eps []*Endpoint) []*S {
	states := make([]*S, len(eps))
	entries := make([]*stateEntry[S], len(eps))
	r.mu.Lock()
	r.sweepLocked()
	for i, ep := range eps {
		e := r.m[ep.Addr]
		if e == nil {
			e = &stateEntry[S]{addr: ep.Addr, s: r.o.New(ep)}
			r.m[ep.Addr] = e
		}
		e.refs++
		states[i], entries[i] = e.s, e
	}
	r.mu.Unlock()
	runtime.AddCleanup(owner, r.release, entries)
	return states
}

// release drops one reference to each entry; it runs when an owner passed to Acquire is garbage collected.
func (r *States[S]) release(entries []*stateEntry[S]) {
	now := r.o.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range entries {
		e.refs--
		if e.refs == 0 {
			e.releasedAt = now
			if !e.listed {
				e.listed = true
				r.released = append(r.released, e)
			}
		}
	}
}

// Sweep drops the states that have been unreferenced for Retain and are idle.
func (r *States[S]) Sweep() {
	r.mu.Lock()
	r.sweepLocked()
	r.mu.Unlock()
}

func (r *States[S]) sweepLocked() {
	if len(r.released) == 0 {
		return
	}
	now := r.o.Now()
	keep := r.released[:0]
	for _, e := range r.released {
		switch {
		case e.refs > 0: // acquired again
			e.listed = false
		case now.Sub(e.releasedAt) >= r.o.Retain && r.o.Idle(e.s):
			e.listed = false
			if r.m[e.addr] == e {
				delete(r.m, e.addr)
			}
		default:
			keep = append(keep, e)
		}
	}
	clear(r.released[len(keep):])
	r.released = keep
}

// Get returns the state kept for addr, if any.
func (r *States[S]) Get(addr netip.AddrPort) (*S, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.m[addr]
	if !ok {
		return nil, false
	}
	return e.s, true
}

// Range calls f for every kept state, under the lock that Acquire takes: f must be quick and must not call back into
// r. It stops when f returns false.
func (r *States[S]) Range(f func(addr netip.AddrPort, s *S) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for addr, e := range r.m {
		if !f(addr, e.s) {
			return
		}
	}
}

// Len returns the number of endpoints with state.
func (r *States[S]) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}
