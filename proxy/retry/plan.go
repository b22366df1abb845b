package retry

import (
	"math"
	"time"
)

// Results of a retry decision, the values of the retry_total metric's result label.
const (
	// ResultAttempted: the attempt was retried (one withdrawal from the budget).
	ResultAttempted = "attempted"
	// ResultBudgetExhausted: the attempt was retryable, but the budget had no retry left.
	ResultBudgetExhausted = "budget_exhausted"
	// ResultNotRetryable: the attempt failed, but the policy does not retry it (outcome not listed, method not
	// idempotent, or a request body that could not be buffered for replay).
	ResultNotRetryable = "not_retryable"
	// ResultLimitReached: the attempt was retryable, but the route's attempts were used up or the request's deadline
	// would pass before the next attempt.
	ResultLimitReached = "limit_reached"
)

// Counter is incremented once per decision; prometheus.Counter satisfies it.
type Counter interface{ Inc() }

// Counters count a Plan's decisions; nil fields count nothing.
type Counters struct {
	Attempted, BudgetExhausted, NotRetryable, LimitReached Counter
}

// Plan is a route's compiled retry behaviour, shared by all its requests. It is immutable and safe for concurrent
// use; Decide does not allocate.
type Plan struct {
	// Policy decides which outcomes are retryable. Required.
	Policy *Policy
	// Budget caps retries; every retry withdraws one. Required.
	Budget *Budget
	// Backoff spaces the attempts.
	Backoff Backoff
	// Attempts is the maximum number of retries beyond the first try.
	Attempts int
	// PerTryTimeout bounds each attempt's wait for response headers; 0 means only the request timeout applies.
	PerTryTimeout time.Duration
	// MaxBodyBytes is the largest request body buffered for replay; 0 buffers nothing (a request with a body is then
	// retried only when nothing of it was sent).
	MaxBodyBytes int
	// Counters count the decisions.
	Counters Counters
}

// NoDeadline is the time left of a request without a deadline.
const NoDeadline = time.Duration(math.MaxInt64)

// Decide reports whether attempt n (0 for the first try) of a request with the given method, which ended with o, is
// retried, and after which delay. replayable says whether the request can be sent again (its body was buffered, or
// not yet read); left is the time until the request's deadline (NoDeadline without one). A retry withdraws from the
// budget; every decision about a failed or retryable attempt is counted.
func (p *Plan) Decide(method string, n int, o Outcome, replayable bool, left time.Duration) (time.Duration, bool) {
	if !replayable || !p.Policy.Retryable(method, o) {
		if o.Failure() {
			inc(p.Counters.NotRetryable)
		}
		return 0, false
	}
	delay := p.Backoff.Delay(n)
	if n >= p.Attempts || delay >= left {
		inc(p.Counters.LimitReached)
		return 0, false
	}
	if !p.Budget.Withdraw() {
		inc(p.Counters.BudgetExhausted)
		return 0, false
	}
	inc(p.Counters.Attempted)
	return delay, true
}

func inc(c Counter) {
	if c != nil {
		c.Inc()
	}
}
