package retry

import (
	"math/rand/v2"
	"time"
)

// Linkerd's retry backoff defaults.
const (
	// DefaultBackoffBase is the ceiling of the first retry's delay.
	DefaultBackoffBase = 25 * time.Millisecond
	// DefaultBackoffMax caps every delay.
	DefaultBackoffMax = 250 * time.Millisecond
)

// Backoff spaces retries exponentially with full jitter: retry n (0 for the first) waits
//
//	uniform[0, min(Max, Base × 2^n)]
//
// The zero value uses the defaults (25 ms, 250 ms, math/rand/v2). A Backoff is a value: copy it freely; it is safe for
// concurrent use if Int64N is.
type Backoff struct {
	// Base is the ceiling of the first retry's delay. Default 25ms.
	Base time.Duration
	// Max caps every delay. Default 250ms (at least Base).
	Max time.Duration
	// Int64N returns a uniform random int64 in [0, n). Default math/rand/v2.Int64N.
	Int64N func(n int64) int64
}

// Delay returns how long to wait before retry n (0 for the first retry).
func (b Backoff) Delay(n int) time.Duration {
	return time.Duration(b.int64n(int64(b.Ceiling(n)) + 1))
}

// Ceiling returns the largest delay of retry n: min(Max, Base × 2^n).
func (b Backoff) Ceiling(n int) time.Duration {
	base, ceil := b.Base, b.Max
	if base <= 0 {
		base = DefaultBackoffBase
	}
	if ceil <= 0 {
		ceil = DefaultBackoffMax
	}
	ceil = max(ceil, base)
	d := base
	for i := 0; i < n && d < ceil; i++ {
		if d > ceil/2 {
			return ceil
		}
		d *= 2
	}
	return min(d, ceil)
}

func (b Backoff) int64n(n int64) int64 {
	if b.Int64N == nil {
		return rand.Int64N(n)
	}
	return b.Int64N(n)
}
