// Package circuit bounds how much of one service a proxy uses at once (circuit breaking): HTTP requests in flight,
// requests waiting for a free slot, and opaque TCP connections. Requests beyond the limits fail at once, so an
// overloaded service sheds load instead of queueing without bound.
package circuit

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Limits are a service's limits. The zero value limits nothing but allows no waiting; use Unlimited as a base.
type Limits struct {
	// MaxRequests bounds the requests in flight; 0 means unlimited.
	MaxRequests int64
	// MaxPending bounds the requests waiting for a slot while MaxRequests are in flight; negative means unlimited.
	MaxPending int64
	// MaxConnections bounds the TCP connections open; 0 means unlimited.
	MaxConnections int64
}

// Unlimited limits nothing.
var Unlimited = Limits{MaxPending: -1}

// Errors of Acquire; the relay answers 503 with their text.
var (
	// ErrPendingFull: MaxRequests are in flight and MaxPending requests already wait.
	ErrPendingFull = errors.New("circuit breaker: too many requests in flight and waiting (maxRequests, maxPendingRequests)")
	// ErrWaitExpired: the request's deadline passed, or its client went away, while it waited for a slot.
	ErrWaitExpired = errors.New("circuit breaker: no request slot before the deadline (maxRequests)")
)

// Counter is incremented once per refusal; prometheus.Counter satisfies it.
type Counter interface{ Inc() }

// Counters count a Breaker's refusals by limit; nil fields count nothing.
type Counters struct {
	// Pending counts requests refused because MaxPending requests already waited (ErrPendingFull).
	Pending Counter
	// Wait counts requests whose wait for a slot ended without one (ErrWaitExpired).
	Wait Counter
	// Conn counts connections refused by MaxConnections.
	Conn Counter
}

// Breaker counts a service's requests and connections against its Limits. It lives as long as the service (across
// configuration reloads), so that requests started under old limits still count. It is safe for concurrent use.
type Breaker struct {
	limits   atomic.Pointer[Limits]
	counters atomic.Pointer[Counters]
	inflight atomic.Int64
	conns    atomic.Int64
	nwait    atomic.Int64 // len(waiters), readable without mu
	mu       sync.Mutex
	waiters  []chan struct{}
}

// New returns a Breaker with limits l.
func New(l Limits) *Breaker {
	b := &Breaker{}
	b.limits.Store(&l)
	return b
}

// SetCounters sets the counters of refusals.
func (b *Breaker) SetCounters(c Counters) { b.counters.Store(&c) }

func (b *Breaker) count(pick func(*Counters) Counter) {
	if c := b.counters.Load(); c != nil {
		if n := pick(c); n != nil {
			n.Inc()
		}
	}
}

// Limits returns the current limits.
func (b *Breaker) Limits() Limits { return *b.limits.Load() }

// SetLimits replaces the limits; waiting requests that the new limits admit go ahead.
func (b *Breaker) SetLimits(l Limits) {
	b.limits.Store(&l)
	b.wake()
}

// InFlight returns the number of requests holding a slot.
func (b *Breaker) InFlight() int64 { return b.inflight.Load() }

// Waiting returns the number of requests waiting for a slot.
func (b *Breaker) Waiting() int64 { return b.nwait.Load() }

// tryAcquire takes a slot if fewer than limit are in flight (limit 0: unlimited).
func (b *Breaker) tryAcquire(limit int64) bool {
	if limit <= 0 {
		b.inflight.Add(1)
		return true
	}
	for {
		n := b.inflight.Load()
		if n >= limit {
			return false
		}
		if b.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Acquire takes a request slot, waiting while MaxRequests are in flight (as one of at most MaxPending) until the
// deadline (zero: none) or until cancel is closed. Every successful Acquire must be followed by one Release. Without
// a MaxRequests limit it only counts the request and never waits or allocates.
func (b *Breaker) Acquire(deadline time.Time, cancel <-chan struct{}) error {
	l := b.limits.Load()
	if b.tryAcquire(l.MaxRequests) {
		return nil
	}
	b.mu.Lock()
	b.nwait.Add(1) // before the second try: a Release that frees a slot after it sees this waiter
	if b.tryAcquire(l.MaxRequests) {
		b.nwait.Add(-1)
		b.mu.Unlock()
		return nil
	}
	if l.MaxPending >= 0 && int64(len(b.waiters)) >= l.MaxPending {
		b.nwait.Add(-1)
		b.mu.Unlock()
		b.count(func(c *Counters) Counter { return c.Pending })
		return ErrPendingFull
	}
	w := make(chan struct{})
	b.waiters = append(b.waiters, w)
	b.mu.Unlock()
	var expire <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		expire = t.C
	}
	select {
	case <-w:
		return nil
	case <-expire:
	case <-cancel:
	}
	b.mu.Lock()
	if i := slices.Index(b.waiters, w); i >= 0 {
		b.waiters = slices.Delete(b.waiters, i, i+1)
		b.nwait.Add(-1)
		b.mu.Unlock()
		b.count(func(c *Counters) Counter { return c.Wait })
		return ErrWaitExpired
	}
	b.mu.Unlock()
	b.Release() // a slot was handed over as the wait ended: give it back
	b.count(func(c *Counters) Counter { return c.Wait })
	return ErrWaitExpired
}

// Release returns a request slot, handing it to the longest-waiting request if there is one.
func (b *Breaker) Release() {
	b.inflight.Add(-1)
	if b.nwait.Load() > 0 {
		b.wake()
	}
}

// wake hands free slots to waiting requests, oldest first.
func (b *Breaker) wake() {
	b.mu.Lock()
	defer b.mu.Unlock()
	limit := b.limits.Load().MaxRequests
	for len(b.waiters) > 0 && b.tryAcquire(limit) {
		w := b.waiters[0]
		b.waiters = slices.Delete(b.waiters, 0, 1)
		b.nwait.Add(-1)
		close(w)
	}
}

// AcquireConn counts a new TCP connection and reports whether MaxConnections allows it. Every successful AcquireConn
// must be followed by one ReleaseConn.
func (b *Breaker) AcquireConn() bool {
	limit := b.limits.Load().MaxConnections
	if limit <= 0 {
		b.conns.Add(1)
		return true
	}
	for {
		n := b.conns.Load()
		if n >= limit {
			b.count(func(c *Counters) Counter { return c.Conn })
			return false
		}
		if b.conns.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// ReleaseConn counts the end of a connection AcquireConn admitted.
func (b *Breaker) ReleaseConn() { b.conns.Add(-1) }

// Connections returns the number of TCP connections open.
func (b *Breaker) Connections() int64 { return b.conns.Load() }
