package leastrequest_test

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/balance/leastrequest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func endpoints(n int) []*balance.Endpoint {
	eps := make([]*balance.Endpoint, n)
	for i := range eps {
		eps[i] = balance.NewEndpoint(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80), "", "")
	}
	return eps
}

func seeded(seed uint64) func(int) int {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed))
	return func(n int) int { mu.Lock(); defer mu.Unlock(); return r.IntN(n) }
}

func pending(t *testing.T, b *leastrequest.Builder, eps []*balance.Endpoint) []int64 {
	t.Helper()
	out := make([]int64, len(eps))
	for i, ep := range eps {
		n, ok := b.Pending(ep.Addr)
		if !ok {
			t.Fatalf("no state for %v", ep.Addr)
		}
		out[i] = n
	}
	return out
}

// Requests held open spread evenly: with two choices no endpoint gets more than a couple of requests above the mean
// (the classic O(log log n) bound; exactly even with two endpoints, which are always both compared), where uniform
// random choice would drift by about √(picks/n), here about 10.
func TestBalancesInFlight(t *testing.T) {
	for _, n := range []int{2, 4, 10} {
		for seed := range uint64(5) {
			b := leastrequest.NewBuilder(leastrequest.Options{IntN: seeded(seed)})
			eps := endpoints(n)
			p := b.Build(eps)
			var held []func(balance.DoneInfo)
			for range 100 * n {
				_, done, err := p.Pick()
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, done)
			}
			inflight := pending(t, b, eps)
			lo, hi := inflight[0], inflight[0]
			for _, v := range inflight {
				lo, hi = min(lo, v), max(hi, v)
			}
			if n == 2 && hi-lo != 0 || hi-100 > 2 || 100-lo > 4 {
				t.Fatalf("n=%d seed %d: in flight %v", n, seed, inflight)
			}
			for _, done := range held {
				done(balance.DoneInfo{Err: balance.ErrNoEndpoints}) // outcome is irrelevant to the count
			}
			for i, v := range pending(t, b, eps) {
				if v != 0 {
					t.Fatalf("endpoint %d: %d in flight after every done", i, v)
				}
			}
		}
	}
}

// When requests on one endpoint finish, new requests go there until the load is even again.
func TestFollowsCompletions(t *testing.T) {
	b := leastrequest.NewBuilder(leastrequest.Options{IntN: seeded(1)})
	eps := endpoints(2)
	p := b.Build(eps)
	held := map[*balance.Endpoint][]func(balance.DoneInfo){}
	for range 20 {
		ep, done, _ := p.Pick()
		held[ep] = append(held[ep], done)
	}
	for _, done := range held[eps[0]] {
		done(balance.DoneInfo{})
	}
	for i := range 10 {
		if ep, _, _ := p.Pick(); ep != eps[0] {
			t.Fatalf("pick %d went to the loaded endpoint", i)
		}
	}
}

// On a tie the first endpoint drawn wins.
func TestTieTakesFirstDraw(t *testing.T) {
	draws := []int{2, 0} // i = 2, j = 0
	k := 0
	b := leastrequest.NewBuilder(leastrequest.Options{IntN: func(int) int { k++; return draws[(k-1)%2] }})
	eps := endpoints(3)
	if ep, _, _ := b.Build(eps).Pick(); ep != eps[2] {
		t.Fatalf("picked %v, want the first draw", ep.Addr)
	}
}

func TestInFlightSurvivesRebuild(t *testing.T) {
	b := leastrequest.NewBuilder(leastrequest.Options{})
	eps := endpoints(2)
	_, done, _ := b.Build(eps[:1]).Pick()
	next := endpoints(2)
	p := b.Build(next)
	for i := range 5 {
		if ep, d, _ := p.Pick(); ep != next[1] {
			t.Fatalf("pick %d ignored the old snapshot's request in flight", i)
		} else {
			d(balance.DoneInfo{})
		}
	}
	done(balance.DoneInfo{})
	if got := pending(t, b, next); got[0] != 0 || got[1] != 0 {
		t.Fatalf("in flight %v", got)
	}
}

func TestConcurrentPicks(t *testing.T) {
	b := leastrequest.NewBuilder(leastrequest.Options{})
	eps := endpoints(4)
	p := b.Build(eps)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 5000 {
				_, done, _ := p.Pick()
				done(balance.DoneInfo{})
			}
		})
	}
	wg.Wait()
	for i, v := range pending(t, b, eps) {
		if v != 0 {
			t.Fatalf("endpoint %d: %d in flight", i, v)
		}
	}
}
