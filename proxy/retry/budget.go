// Package retry decides whether and when a failed request is tried again: a Budget caps retries at a share of recent
// traffic, Backoff spaces the attempts, and a Policy says which outcomes of which requests may be retried. The package
// is pure: no goroutines, time and randomness are injected.
package retry

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Linkerd's and Finagle's defaults.
const (
	// DefaultRatio is the fraction of original requests that may be retried.
	DefaultRatio = 0.2
	// DefaultMinPerSecond is the retry rate allowed whatever the traffic.
	DefaultMinPerSecond = 10
	// DefaultTTL is the window over which requests and retries are counted.
	DefaultTTL = 10 * time.Second
)

const (
	// buckets is the number of slices of the TTL window; the window slides one slice (TTL/10) at a time.
	buckets = 10
	// unit is the cost of one retry in budget units; a deposit is worth Ratio × unit.
	unit = 10_000
)

// BudgetOptions configures a Budget. Ratio and MinPerSecond are taken as given (zero is a valid setting): start from
// DefaultBudgetOptions to get the defaults.
type BudgetOptions struct {
	// Ratio is the number of retries allowed per original request, 0 or more (0.2: one retry per five requests).
	Ratio float64
	// MinPerSecond is the retry rate allowed regardless of traffic, 0 or more: a reserve of MinPerSecond × TTL retries
	// per window, so that low-traffic clients can retry at all.
	MinPerSecond float64
	// TTL is how long a deposit or withdrawal counts. Default (when zero) DefaultTTL.
	TTL time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// DefaultBudgetOptions returns ratio 0.2, 10 retries per second, TTL 10 s.
func DefaultBudgetOptions() BudgetOptions {
	return BudgetOptions{Ratio: DefaultRatio, MinPerSecond: DefaultMinPerSecond, TTL: DefaultTTL}
}

// Budget is a retry budget in the style of Finagle and Linkerd: over any window of TTL (in slices of TTL/10),
//
//	retries ≤ Ratio × original requests + MinPerSecond × TTL.
//
// Call Deposit for every original request and Withdraw before every retry; a retry goes ahead only if Withdraw returns
// true. Deposits and withdrawals expire after TTL. Budget is safe for concurrent use and lock-free except for one short
// critical section when the window slides (once per TTL/10); its memory is fixed.
type Budget struct {
	nanos   func() int64
	width   int64 // nanoseconds per bucket
	deposit int64 // units per original request
	reserve int64 // units always available per window
	mu      sync.Mutex
	b       [buckets]bucket
}

// bucket holds the net units (deposits minus withdrawals) of the time slice slot.
type bucket struct {
	slot  atomic.Int64
	count atomic.Int64
	_     [48]byte // one bucket per cache line: concurrent callers write to the current bucket only
}

// NewBudget returns an empty budget (only the reserve is available).
func NewBudget(o BudgetOptions) (*Budget, error) {
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	var errs []error
	if o.Ratio < 0 || math.IsNaN(o.Ratio) || o.Ratio > 1000 {
		errs = append(errs, fmt.Errorf("ratio %v must be between 0 and 1000", o.Ratio))
	}
	if o.MinPerSecond < 0 || math.IsNaN(o.MinPerSecond) || o.MinPerSecond > 1e9 {
		errs = append(errs, fmt.Errorf("minPerSecond %v must be between 0 and 1e9", o.MinPerSecond))
	}
	if o.TTL < buckets*time.Millisecond || o.TTL > 24*time.Hour {
		errs = append(errs, fmt.Errorf("ttl %v must be between 10ms and 24h", o.TTL))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("retry budget: %w", err)
	}
	b := &Budget{nanos: elapsed(o.Now), width: int64(o.TTL / buckets),
		deposit: int64(math.Round(o.Ratio * unit)),
		reserve: int64(math.Round(o.MinPerSecond * o.TTL.Seconds() * unit))}
	for i := range b.b {
		b.b[i].slot.Store(math.MinInt64)
	}
	return b, nil
}

// current returns the bucket of the present time slice, clearing it first if it still holds an expired slice.
func (b *Budget) current() (*bucket, int64) {
	cur := max(b.nanos(), 0) / b.width
	bk := &b.b[cur%buckets]
	if bk.slot.Load() != cur {
		b.mu.Lock()
		if bk.slot.Load() < cur {
			bk.count.Store(0)
			bk.slot.Store(cur)
		}
		b.mu.Unlock()
	}
	return bk, cur
}

// sum returns the net units of the window ending with slice cur, reserve included.
func (b *Budget) sum(cur int64) int64 {
	s := b.reserve
	for i := range b.b {
		if slot := b.b[i].slot.Load(); slot > cur-buckets && slot <= cur {
			s += b.b[i].count.Load()
		}
	}
	return s
}

// Deposit records an original request (not a retry): it adds Ratio retries to the budget for TTL.
func (b *Budget) Deposit() {
	bk, _ := b.current()
	bk.count.Add(b.deposit)
}

// Withdraw takes one retry from the budget and reports whether there was one. Concurrent withdrawals never overdraw
// the budget; when they race for the last retry, both may be refused.
func (b *Budget) Withdraw() bool {
	bk, cur := b.current()
	bk.count.Add(-unit)
	if b.sum(cur) >= 0 {
		return true
	}
	if bk.slot.Load() == cur { // else the slice expired meanwhile, taking the withdrawal with it
		bk.count.Add(unit)
	}
	return false
}

// Balance returns the number of retries the budget would allow now (fractional), for metrics.
func (b *Budget) Balance() float64 {
	cur := max(b.nanos(), 0) / b.width
	return float64(b.sum(cur)) / unit
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
