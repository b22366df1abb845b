package retry_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/proxy/retry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeClock struct {
	base time.Time
	off  atomic.Int64
}

func newClock() *fakeClock                   { return &fakeClock{base: time.Unix(1_700_000_000, 0)} }
func (c *fakeClock) Now() time.Time          { return c.base.Add(time.Duration(c.off.Load())) }
func (c *fakeClock) Advance(d time.Duration) { c.off.Add(int64(d)) }

func newBudget(t testing.TB, ratio, minPerSecond float64, clk *fakeClock) *retry.Budget {
	t.Helper()
	o := retry.DefaultBudgetOptions()
	o.Ratio, o.MinPerSecond, o.Now = ratio, minPerSecond, clk.Now
	b, err := retry.NewBudget(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func withdrawAll(b *retry.Budget) int {
	n := 0
	for b.Withdraw() {
		n++
	}
	return n
}

func TestReserveAndRatio(t *testing.T) {
	tests := []struct {
		name         string
		ratio, min   float64
		deposits     int
		wantRetries  int
		wantBalance0 float64
	}{
		{"defaults, no traffic: the reserve", 0.2, 10, 0, 100, 100},
		{"defaults, 1000 requests", 0.2, 10, 1000, 300, 300},
		{"ratio only", 0.2, 0, 10, 2, 2},
		{"ratio only, 14 requests", 0.2, 0, 14, 2, 2.8},
		{"no retries at all", 0, 0, 1000, 0, 0},
		{"ratio 1", 1, 0, 7, 7, 7},
		{"fractional minimum", 0, 0.5, 0, 5, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBudget(t, tt.ratio, tt.min, newClock())
			for range tt.deposits {
				b.Deposit()
			}
			if got := b.Balance(); got != tt.wantBalance0 {
				t.Fatalf("balance %v, want %v", got, tt.wantBalance0)
			}
			if got := withdrawAll(b); got != tt.wantRetries {
				t.Fatalf("%d retries, want %d", got, tt.wantRetries)
			}
		})
	}
}

// 100 requests per second, each failing and asking for one retry: in steady state retries settle at
// ratio × 100 + minPerSecond = 30 per second, and no TTL window (in slices of TTL/10) ever holds more than
// ratio × requests + minPerSecond × TTL retries.
func TestSteadyState(t *testing.T) {
	clk := newClock()
	b := newBudget(t, 0.2, 10, clk)
	const seconds = 120
	var deposits, retries [seconds]int
	for s := range seconds {
		for range 100 {
			b.Deposit()
			deposits[s]++
			if b.Withdraw() {
				retries[s]++
			}
			clk.Advance(10 * time.Millisecond)
		}
	}
	for end := 10; end <= seconds; end++ {
		d, r := 0, 0
		for s := end - 10; s < end; s++ {
			d, r = d+deposits[s], r+retries[s]
		}
		if float64(r) > 0.2*float64(d)+100 {
			t.Fatalf("window ending at %ds: %d retries for %d requests", end, r, d)
		}
	}
	total := 0
	for _, r := range retries[20:] {
		total += r
	}
	rate := float64(total) / (seconds - 20)
	t.Logf("retries per second %v", retries)
	if rate < 27 || rate > 33 {
		t.Fatalf("steady-state retry rate %.1f/s, want about 30/s", rate)
	}
}

// A burst of failing requests, each retried up to three times: retries never exceed what the budget allows.
func TestBurstNeverExceedsBudget(t *testing.T) {
	clk := newClock()
	b := newBudget(t, 0.2, 10, clk)
	retries := 0
	for range 10000 {
		b.Deposit()
		for range 3 {
			if !b.Withdraw() {
				break
			}
			retries++
		}
	}
	if retries > 0.2*10000+100 {
		t.Fatalf("%d retries for 10000 requests", retries)
	}
	if retries < 2000 {
		t.Fatalf("only %d retries: the budget was not used", retries)
	}
}

func TestWindowSlides(t *testing.T) {
	clk := newClock()
	b := newBudget(t, 0.2, 10, clk)
	for range 1000 {
		b.Deposit() // 200 retries for 10s
	}
	if got := b.Balance(); got != 300 {
		t.Fatalf("balance %v, want 300", got)
	}
	for range 150 {
		b.Withdraw()
	}
	clk.Advance(9 * time.Second)
	if got := b.Balance(); got != 150 {
		t.Fatalf("balance after 9s %v, want 150", got)
	}
	clk.Advance(time.Second) // the first slice (deposits and withdrawals) expires
	if got := b.Balance(); got != 100 {
		t.Fatalf("balance after 10s %v, want the reserve 100", got)
	}
	// Withdrawals expire as well: the reserve comes back TTL after it was spent.
	if got := withdrawAll(b); got != 100 {
		t.Fatalf("%d retries from the reserve", got)
	}
	clk.Advance(5 * time.Second)
	if b.Withdraw() {
		t.Fatal("withdrew from a spent reserve")
	}
	clk.Advance(5 * time.Second)
	if got := b.Balance(); got != 100 {
		t.Fatalf("balance %v after the spent reserve expired", got)
	}
	// A long idle period leaves only the reserve.
	b.Deposit()
	clk.Advance(time.Hour)
	if got := b.Balance(); got != 100 {
		t.Fatalf("balance after an hour %v", got)
	}
}

// Concurrent withdrawals never overdraw: the successes never exceed the budget.
func TestConcurrentNeverOverdraws(t *testing.T) {
	clk := newClock()
	b := newBudget(t, 0.2, 10, clk)
	var ok atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 5000 {
				b.Deposit()
				for range 2 {
					if b.Withdraw() {
						ok.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	if got, limit := ok.Load(), int64(0.2*8*5000+100); got > limit || got < limit*9/10 {
		t.Fatalf("%d retries, budget %d", got, limit)
	}
}

func TestNewBudgetErrors(t *testing.T) {
	tests := []struct {
		name string
		o    retry.BudgetOptions
		ok   bool
	}{
		{"defaults", retry.DefaultBudgetOptions(), true},
		{"zero value (ttl defaulted, no retries)", retry.BudgetOptions{}, true},
		{"negative ratio", retry.BudgetOptions{Ratio: -0.1}, false},
		{"negative minimum", retry.BudgetOptions{MinPerSecond: -1}, false},
		{"ttl too short", retry.BudgetOptions{TTL: time.Millisecond}, false},
		{"negative ttl", retry.BudgetOptions{TTL: -time.Second}, false},
	}
	for _, tt := range tests {
		if _, err := retry.NewBudget(tt.o); (err == nil) != tt.ok {
			t.Errorf("%s: err %v", tt.name, err)
		}
	}
}

func BenchmarkBudget(b *testing.B) {
	o := retry.DefaultBudgetOptions()
	bud, err := retry.NewBudget(o)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("Deposit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			bud.Deposit()
		}
	})
	b.Run("Withdraw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			bud.Withdraw()
		}
	})
	b.Run("DepositParallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				bud.Deposit()
			}
		})
	})
	b.Run("WithdrawParallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				bud.Withdraw()
			}
		})
	})
}
