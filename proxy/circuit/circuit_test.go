package circuit

import (
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestUnlimited(t *testing.T) {
	b := New(Unlimited)
	for range 100 {
		if err := b.Acquire(time.Time{}, nil); err != nil {
			t.Fatal(err)
		}
		if !b.AcquireConn() {
			t.Fatal("connection refused without a limit")
		}
	}
	if b.InFlight() != 100 || b.Connections() != 100 {
		t.Fatalf("in flight %d, connections %d", b.InFlight(), b.Connections())
	}
	for range 100 {
		b.Release()
		b.ReleaseConn()
	}
	if b.InFlight() != 0 || b.Connections() != 0 {
		t.Fatalf("in flight %d, connections %d after release", b.InFlight(), b.Connections())
	}
}

func TestNoWaiting(t *testing.T) {
	b := New(Limits{MaxRequests: 2, MaxPending: 0})
	for range 2 {
		if err := b.Acquire(time.Time{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Acquire(time.Time{}, nil); !errors.Is(err, ErrPendingFull) {
		t.Fatalf("third request: %v, want ErrPendingFull", err)
	}
	b.Release()
	if err := b.Acquire(time.Time{}, nil); err != nil {
		t.Fatalf("after a release: %v", err)
	}
}

// TestWaitersGetFreedSlots checks that waiting requests (up to MaxPending) get slots in order as requests finish,
// that one more is refused, and that the in-flight count never exceeds MaxRequests.
func TestWaitersGetFreedSlots(t *testing.T) {
	b := New(Limits{MaxRequests: 1, MaxPending: 3})
	if err := b.Acquire(time.Time{}, nil); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	order := make(chan int, 3)
	for i := range 3 {
		wg.Go(func() {
			if err := b.Acquire(time.Time{}, nil); err != nil {
				t.Error(err)
				return
			}
			if n := b.InFlight(); n != 1 {
				t.Errorf("in flight %d with maxRequests 1", n)
			}
			order <- i
			b.Release()
		})
		for b.Waiting() != int64(i+1) {
			time.Sleep(time.Millisecond)
		}
	}
	if err := b.Acquire(time.Time{}, nil); !errors.Is(err, ErrPendingFull) {
		t.Fatalf("fifth request: %v, want ErrPendingFull", err)
	}
	b.Release()
	wg.Wait()
	close(order)
	want := 0
	for i := range order {
		if i != want {
			t.Errorf("waiter %d served, want %d (oldest first)", i, want)
		}
		want++
	}
	if b.InFlight() != 0 || b.Waiting() != 0 {
		t.Fatalf("in flight %d, waiting %d", b.InFlight(), b.Waiting())
	}
}

func TestWaitExpires(t *testing.T) {
	b := New(Limits{MaxRequests: 1, MaxPending: -1})
	if err := b.Acquire(time.Time{}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.Acquire(time.Now().Add(20*time.Millisecond), nil); !errors.Is(err, ErrWaitExpired) {
		t.Fatalf("deadline: %v, want ErrWaitExpired", err)
	}
	cancel := make(chan struct{})
	close(cancel)
	if err := b.Acquire(time.Time{}, cancel); !errors.Is(err, ErrWaitExpired) {
		t.Fatalf("canceled: %v, want ErrWaitExpired", err)
	}
	if b.Waiting() != 0 || b.InFlight() != 1 {
		t.Fatalf("waiting %d, in flight %d", b.Waiting(), b.InFlight())
	}
}

func TestRaisedLimitWakesWaiters(t *testing.T) {
	b := New(Limits{MaxRequests: 1, MaxPending: -1})
	if err := b.Acquire(time.Time{}, nil); err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- b.Acquire(time.Now().Add(10*time.Second), nil) }()
	for b.Waiting() != 1 {
		time.Sleep(time.Millisecond)
	}
	b.SetLimits(Unlimited)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if b.InFlight() != 2 {
		t.Fatalf("in flight %d, want 2", b.InFlight())
	}
}

func TestMaxConnections(t *testing.T) {
	b := New(Limits{MaxConnections: 2, MaxPending: -1})
	for i := range 2 {
		if !b.AcquireConn() {
			t.Fatalf("connection %d under the limit refused", i)
		}
	}
	if b.AcquireConn() {
		t.Fatal("third connection admitted")
	}
	b.ReleaseConn()
	if !b.AcquireConn() {
		t.Fatal("connection after a release refused")
	}
}

// TestConcurrentLimit hammers a breaker from many goroutines and checks the in-flight bound holds.
func TestConcurrentLimit(t *testing.T) {
	const limit = 4
	b := New(Limits{MaxRequests: limit, MaxPending: -1})
	var mu sync.Mutex
	active, peak := 0, 0
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for range 200 {
				if err := b.Acquire(time.Time{}, nil); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				active++
				peak = max(peak, active)
				mu.Unlock()
				mu.Lock()
				active--
				mu.Unlock()
				b.Release()
			}
		})
	}
	wg.Wait()
	if peak > limit {
		t.Fatalf("peak %d requests active, limit %d", peak, limit)
	}
	if b.InFlight() != 0 || b.Waiting() != 0 {
		t.Fatalf("in flight %d, waiting %d", b.InFlight(), b.Waiting())
	}
}

func BenchmarkAcquireRelease(b *testing.B) {
	for _, tc := range []struct {
		name string
		l    Limits
	}{{"unlimited", Unlimited}, {"limited", Limits{MaxRequests: 1000, MaxPending: -1}}} {
		b.Run(tc.name, func(b *testing.B) {
			br := New(tc.l)
			b.ReportAllocs()
			for b.Loop() {
				if err := br.Acquire(time.Time{}, nil); err != nil {
					b.Fatal(err)
				}
				br.Release()
			}
		})
	}
}
