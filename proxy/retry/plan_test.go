package retry_test

import (
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/proxy/retry"
)

type count int

func (c *count) Inc() { *c++ }

func TestPlanDecide(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name       string
		retryOn    []string
		attempts   int
		reserve    float64 // retries per second the budget allows with no traffic
		method     string
		n          int
		o          retry.Outcome
		replayable bool
		left       time.Duration
		want       bool
		counted    string // which counter moved, "" for none
	}{
		{"success", []string{"5xx"}, 2, 10, "GET", 0, retry.Outcome{Status: 200}, true, retry.NoDeadline, false, ""},
		{"retryable", []string{"5xx"}, 2, 10, "GET", 0, retry.Outcome{Status: 503}, true, retry.NoDeadline, true, "attempted"},
		{"second retry", []string{"5xx"}, 2, 10, "GET", 1, retry.Outcome{Status: 503}, true, retry.NoDeadline, true, "attempted"},
		{"attempts used up", []string{"5xx"}, 2, 10, "GET", 2, retry.Outcome{Status: 503}, true, retry.NoDeadline, false, "limit"},
		{"deadline before the backoff ends", []string{"5xx"}, 2, 10, "GET", 0, retry.Outcome{Status: 503}, true, ms, false, "limit"},
		{"not listed", []string{"gateway-error"}, 2, 10, "GET", 0, retry.Outcome{Status: 500}, true, retry.NoDeadline, false, "not"},
		{"POST", []string{"5xx"}, 2, 10, "POST", 0, retry.Outcome{Status: 500}, true, retry.NoDeadline, false, "not"},
		{"body not replayable", []string{"5xx"}, 2, 10, "PUT", 0, retry.Outcome{Status: 500}, false, retry.NoDeadline, false, "not"},
		{"listed success status", []string{"409"}, 2, 10, "PUT", 0, retry.Outcome{Status: 409}, true, retry.NoDeadline, true, "attempted"},
		{"unlisted client error", []string{"409"}, 2, 10, "PUT", 0, retry.Outcome{Status: 404}, true, retry.NoDeadline, false, ""},
		{"budget empty", []string{"5xx"}, 2, 0, "GET", 0, retry.Outcome{Status: 503}, true, retry.NoDeadline, false, "budget"},
		{"connect failure without policy", nil, 2, 10, "POST", 0, retry.Outcome{ConnectFailure: true}, true, retry.NoDeadline, true, "attempted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := retry.NewPolicy(tt.retryOn, retry.PolicyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			b := newBudget(t, 0.2, tt.reserve, newClock())
			var attempted, budget, not, limit count
			plan := &retry.Plan{Policy: p, Budget: b, Attempts: tt.attempts,
				Backoff:  retry.Backoff{Base: 10 * ms, Max: 10 * ms, Int64N: func(n int64) int64 { return n - 1 }},
				Counters: retry.Counters{Attempted: &attempted, BudgetExhausted: &budget, NotRetryable: &not, LimitReached: &limit}}
			delay, got := plan.Decide(tt.method, tt.n, tt.o, tt.replayable, tt.left)
			if got != tt.want {
				t.Fatalf("Decide = %v, want %v", got, tt.want)
			}
			if got && delay != 10*ms {
				t.Errorf("delay %v, want the backoff's 10ms", delay)
			}
			moved := map[string]count{"attempted": attempted, "budget": budget, "not": not, "limit": limit}
			for name, c := range moved {
				want := count(0)
				if name == tt.counted {
					want = 1
				}
				if c != want {
					t.Errorf("counter %s = %d, want %d", name, c, want)
				}
			}
			if left := b.Balance(); got && left != tt.reserve*10-1 {
				t.Errorf("budget after a retry: %v, want one withdrawal from %v", left, tt.reserve*10)
			}
		})
	}
}

func BenchmarkDecideSuccess(b *testing.B) {
	p, _ := retry.NewPolicy([]string{"5xx"}, retry.PolicyOptions{})
	bud, _ := retry.NewBudget(retry.DefaultBudgetOptions())
	plan := &retry.Plan{Policy: p, Budget: bud, Attempts: 2}
	b.ReportAllocs()
	for b.Loop() {
		if _, again := plan.Decide("GET", 0, retry.Outcome{Status: 200}, true, retry.NoDeadline); again {
			b.Fatal("retried a success")
		}
	}
}
