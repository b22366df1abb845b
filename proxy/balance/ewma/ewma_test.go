package ewma_test

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/balance/ewma"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeClock struct {
	base time.Time
	off  atomic.Int64
}

func newClock() *fakeClock                   { return &fakeClock{base: time.Unix(1_700_000_000, 0)} }
func (c *fakeClock) Now() time.Time          { return c.base.Add(time.Duration(c.off.Load())) }
func (c *fakeClock) Advance(d time.Duration) { c.off.Add(int64(d)) }
func (c *fakeClock) Set(d time.Duration)     { c.off.Store(int64(d)) }

// lockedRand is a seeded, goroutine-safe IntN.
func lockedRand(seed uint64) func(int) int {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed))
	return func(n int) int { mu.Lock(); defer mu.Unlock(); return r.IntN(n) }
}

func endpoints(n int) []*balance.Endpoint {
	eps := make([]*balance.Endpoint, n)
	for i := range eps {
		eps[i] = balance.NewEndpoint(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80), "", "")
	}
	return eps
}

const ms = time.Millisecond

func estimate(t *testing.T, b *ewma.Builder, ep *balance.Endpoint) time.Duration {
	t.Helper()
	rtt, _, ok := b.Estimate(ep.Addr)
	if !ok {
		t.Fatalf("no state for %v", ep.Addr)
	}
	return rtt
}

func near(got, want time.Duration, rel float64) bool {
	return math.Abs(float64(got-want)) <= rel*float64(want)
}

// pickOf picks until the picker returns ep and reports the sample d for it (other picks are completed without a
// sample).
func sample(t *testing.T, p balance.Picker, ep *balance.Endpoint, d balance.DoneInfo) {
	t.Helper()
	for range 1000 {
		got, done, err := p.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if got == ep {
			done(d)
			return
		}
		done(balance.DoneInfo{})
	}
	t.Fatalf("%v never picked", ep.Addr)
}

func TestDefaultsAndDecayWithoutSamples(t *testing.T) {
	clk := newClock()
	b := ewma.NewBuilder(ewma.Options{Now: clk.Now})
	eps := endpoints(2)
	b.Build(eps)
	if got := estimate(t, b, eps[0]); got != ewma.DefaultRTT {
		t.Fatalf("initial estimate %v, want %v", got, ewma.DefaultRTT)
	}
	clk.Advance(ewma.DefaultDecay)
	if got, want := estimate(t, b, eps[0]), time.Duration(float64(ewma.DefaultRTT)*math.Exp(-1)); !near(got, want, 1e-6) {
		t.Fatalf("after one decay period %v, want %v", got, want)
	}
}

// A slow response raises the estimate at once, and the next pick avoids the endpoint.
func TestPeakWithinOneResponse(t *testing.T) {
	clk := newClock()
	b := ewma.NewBuilder(ewma.Options{Now: clk.Now, IntN: lockedRand(1), DefaultRTT: 10 * ms})
	eps := endpoints(2)
	p := b.Build(eps)
	for range 100 {
		clk.Advance(10 * ms)
		for _, ep := range eps {
			sample(t, p, ep, balance.DoneInfo{Latency: 10 * ms})
		}
	}
	if got := estimate(t, b, eps[0]); !near(got, 10*ms, 0.01) {
		t.Fatalf("estimate %v after steady 10ms samples", got)
	}
	sample(t, p, eps[0], balance.DoneInfo{Latency: time.Second})
	if got := estimate(t, b, eps[0]); got != time.Second {
		t.Fatalf("estimate %v right after a 1s response, want 1s", got)
	}
	for i := range 50 {
		ep, done, _ := p.Pick()
		done(balance.DoneInfo{})
		if ep != eps[1] {
			t.Fatalf("pick %d after the spike went to the slow endpoint", i)
		}
	}
}

// After a spike, steady samples r pull the estimate back as r + (spike − r)·e^(−t/Decay).
func TestDecayAfterSpike(t *testing.T) {
	clk := newClock()
	b := ewma.NewBuilder(ewma.Options{Now: clk.Now})
	eps := endpoints(1)
	p := b.Build(eps)
	sample(t, p, eps[0], balance.DoneInfo{Latency: time.Second})
	step, r := 10*ms, 10*ms
	for _, at := range []time.Duration{time.Second, 10 * time.Second, 30 * time.Second} {
		for clk.Now().Sub(clk.base) < at {
			clk.Advance(step)
			sample(t, p, eps[0], balance.DoneInfo{Latency: r})
		}
		want := r + time.Duration(float64(time.Second-r)*math.Exp(-at.Seconds()/10))
		if got := estimate(t, b, eps[0]); !near(got, want, 0.01) {
			t.Errorf("%v after the spike: estimate %v, want %v", at, got, want)
		}
	}
}

func TestSampleRules(t *testing.T) {
	// The estimate starts at 100ms; the sample comes 1s later, when the decay weight is w = e^(−0.1).
	w := math.Exp(-0.1)
	decayed := time.Duration(float64(100*ms) * w) // the estimate when nothing is learnt
	tests := []struct {
		name string
		d    balance.DoneInfo
		want time.Duration
	}{
		{"faster success pulls down", balance.DoneInfo{Latency: 20 * ms}, decayed + time.Duration(float64(20*ms)*(1-w))},
		{"slower success is a peak", balance.DoneInfo{Latency: 300 * ms}, 300 * ms},
		{"fast failure does not lower", balance.DoneInfo{Latency: ms, Failed: true}, decayed},
		{"fast error does not lower", balance.DoneInfo{Latency: ms, Err: balance.ErrNoEndpoints}, decayed},
		{"slow failure is a peak", balance.DoneInfo{Latency: 400 * ms, Failed: true}, 400 * ms},
		{"fast cancel does not lower", balance.DoneInfo{Latency: ms, Canceled: true}, decayed},
		{"slow cancel is a lower bound above", balance.DoneInfo{Latency: 500 * ms, Canceled: true}, 500 * ms},
		{"no latency, no sample", balance.DoneInfo{}, decayed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			b := ewma.NewBuilder(ewma.Options{Now: clk.Now, DefaultRTT: 100 * ms})
			eps := endpoints(1)
			p := b.Build(eps)
			clk.Advance(time.Second) // decay weight e^(−0.1)
			sample(t, p, eps[0], tt.d)
			if got := estimate(t, b, eps[0]); !near(got, tt.want, 1e-6) {
				t.Fatalf("estimate %v, want %v", got, tt.want)
			}
			if _, pending, _ := b.Estimate(eps[0].Addr); pending != 0 {
				t.Fatalf("pending %d after done", pending)
			}
		})
	}
}

// With equal estimates, requests in flight make an endpoint costlier: cost = estimate × (pending + 1).
func TestPendingRaisesCost(t *testing.T) {
	b := ewma.NewBuilder(ewma.Options{Now: newClock().Now, IntN: lockedRand(2)})
	eps := endpoints(2)
	p := b.Build(eps)
	var held []func(balance.DoneInfo)
	for range 10 {
		_, done, _ := p.Pick()
		held = append(held, done)
	}
	for _, ep := range eps {
		if _, pending, _ := b.Estimate(ep.Addr); pending != 5 {
			t.Fatalf("%v: %d in flight of 10, want an even split", ep.Addr, pending)
		}
	}
	for _, done := range held {
		done(balance.DoneInfo{})
	}
}

// event is a response due at a simulated time.
type event struct {
	at   time.Duration
	done func(balance.DoneInfo)
	lat  time.Duration
}

type events []event

func (e events) Len() int           { return len(e) }
func (e events) Less(i, j int) bool { return e[i].at < e[j].at }
func (e events) Swap(i, j int)      { e[i], e[j] = e[j], e[i] }
func (e *events) Push(x any)        { *e = append(*e, x.(event)) }
func (e *events) Pop() any          { old := *e; x := old[len(old)-1]; *e = old[:len(old)-1]; return x }

// simulate sends n requests at rate rps (Poisson arrivals) through a peak-EWMA picker over endpoints whose latencies
// are drawn by latency(i), completing them in time order, and returns the share of requests each endpoint got.
func simulate(t *testing.T, n int, rps float64, latency []func(r *rand.Rand) time.Duration, seed uint64) []float64 {
	t.Helper()
	clk := newClock()
	r := rand.New(rand.NewPCG(seed, 7))
	b := ewma.NewBuilder(ewma.Options{Now: clk.Now, IntN: r.IntN})
	eps := endpoints(len(latency))
	index := map[*balance.Endpoint]int{}
	for i, ep := range eps {
		index[ep] = i
	}
	p := b.Build(eps)
	var q events
	var now time.Duration
	count := make([]int, len(eps))
	for range n {
		now += time.Duration(r.ExpFloat64() / rps * float64(time.Second))
		for q.Len() > 0 && q[0].at <= now {
			e := heap.Pop(&q).(event)
			clk.Set(e.at)
			e.done(balance.DoneInfo{Latency: e.lat})
		}
		clk.Set(now)
		ep, done, err := p.Pick()
		if err != nil {
			t.Fatal(err)
		}
		i := index[ep]
		count[i]++
		lat := latency[i](r)
		heap.Push(&q, event{at: now + lat, done: done, lat: lat})
	}
	share := make([]float64, len(eps))
	for i, c := range count {
		share[i] = float64(c) / float64(n)
	}
	return share
}

func uniform(lo, hi time.Duration) func(r *rand.Rand) time.Duration {
	return func(r *rand.Rand) time.Duration { return lo + time.Duration(r.Int64N(int64(hi-lo))) }
}

// Under load, the faster of two endpoints gets most requests, and a slow endpoint among ten gets far less than its
// tenth; round robin would give 50% and 10%.
func TestPrefersFasterUnderLoad(t *testing.T) {
	fast, slow := uniform(5*ms, 15*ms), uniform(40*ms, 60*ms)
	tests := []struct {
		name     string
		rps      float64
		latency  []func(*rand.Rand) time.Duration
		minFast  float64 // share of endpoint 0
		maxSlow  float64 // share of the last endpoint
		slowLast bool
	}{
		{"two endpoints, light load", 100, []func(*rand.Rand) time.Duration{fast, slow}, 0.9, 0.1, true},
		{"two endpoints, heavy load", 1000, []func(*rand.Rand) time.Duration{fast, slow}, 0.7, 0.3, true},
		{"one slow of ten", 1000, append(repeat(fast, 9), slow), 0, 0.04, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for seed := range uint64(3) {
				share := simulate(t, 20000, tt.rps, tt.latency, seed)
				last := share[len(share)-1]
				t.Logf("seed %d: shares %.3f", seed, share)
				if share[0] < tt.minFast || last > tt.maxSlow {
					t.Fatalf("seed %d: fast share %.3f (want ≥ %.2f), slow share %.3f (want ≤ %.2f)", seed, share[0],
						tt.minFast, last, tt.maxSlow)
				}
			}
		})
	}
}

func repeat[T any](v T, n int) []T {
	s := make([]T, n)
	for i := range s {
		s[i] = v
	}
	return s
}

// State lives in the Builder: a Picker built for a new snapshot with the same addresses keeps the estimates and the
// requests in flight.
func TestStateSurvivesRebuild(t *testing.T) {
	clk := newClock()
	b := ewma.NewBuilder(ewma.Options{Now: clk.Now})
	eps := endpoints(2)
	old := b.Build(eps)
	sample(t, old, eps[0], balance.DoneInfo{Latency: 500 * ms})
	var inflight func(balance.DoneInfo)
	for {
		ep, done, _ := old.Pick()
		if ep == eps[1] {
			inflight = done
			break
		}
		done(balance.DoneInfo{})
	}
	next := endpoints(3) // new Endpoint values, as a reload makes them
	b.Build(next)
	if got := estimate(t, b, next[0]); got != 500*ms {
		t.Fatalf("estimate after rebuild %v, want 500ms", got)
	}
	if _, pending, _ := b.Estimate(next[1].Addr); pending != 1 {
		t.Fatalf("in flight after rebuild %d, want 1", pending)
	}
	inflight(balance.DoneInfo{Latency: 20 * ms}) // the old snapshot's request ends
	if _, pending, _ := b.Estimate(next[1].Addr); pending != 0 {
		t.Fatalf("in flight %d, want 0", pending)
	}
	if got, want := estimate(t, b, next[2]), (500*ms+ewma.DefaultRTT)/2; got != want {
		t.Fatalf("new endpoint's estimate %v, want %v, the mean of the others", got, want)
	}
}

// A new endpoint starts at the mean of the current estimates of the Picker's other endpoints; a Picker of new
// endpoints only starts them all at DefaultRTT.
func TestNewEndpointStartsAtMean(t *testing.T) {
	clk := newClock()
	b := ewma.NewBuilder(ewma.Options{Now: clk.Now, IntN: lockedRand(4)})
	eps := endpoints(4)
	p := b.Build(eps[:3])
	for _, ep := range eps[:3] {
		if got := estimate(t, b, ep); got != ewma.DefaultRTT {
			t.Fatalf("%v in a new backend: estimate %v, want %v", ep.Addr, got, ewma.DefaultRTT)
		}
	}
	for i, ep := range eps[:3] { // peaks set the estimates exactly: 100ms, 200ms, 300ms
		sample(t, p, ep, balance.DoneInfo{Latency: time.Duration(i+1) * 100 * ms})
	}
	clk.Advance(ewma.DefaultDecay) // the estimates decay to e^-1 of that
	b.Build(eps)
	want := time.Duration(float64(200*ms) * math.Exp(-1))
	if got := estimate(t, b, eps[3]); !near(got, want, 1e-6) {
		t.Fatalf("new endpoint's estimate %v, want %v, the mean of the others' current estimates", got, want)
	}
	// Known endpoints keep theirs, and so does the new one in the next Picker.
	clk.Advance(time.Second)
	b.Build(eps[1:])
	if got, want := estimate(t, b, eps[3]), time.Duration(float64(200*ms)*math.Exp(-1.1)); !near(got, want, 1e-6) {
		t.Fatalf("the endpoint's estimate after a rebuild %v, want %v", got, want)
	}
	if got, want := estimate(t, b, eps[0]), time.Duration(float64(100*ms)*math.Exp(-1.1)); !near(got, want, 1e-6) {
		t.Fatalf("known endpoint's estimate %v, want %v", got, want)
	}
}

// A scale-up: an endpoint added to a backend whose endpoints answer in about 1ms gets its share of sequential
// requests at once, where starting at DefaultRTT would keep it out of every pick until that decayed.
func TestNewEndpointGetsTrafficAtOnce(t *testing.T) {
	for seed := range uint64(5) {
		clk := newClock()
		r := rand.New(rand.NewPCG(seed, 11))
		b := ewma.NewBuilder(ewma.Options{Now: clk.Now, IntN: r.IntN})
		eps := endpoints(4)
		index := map[netip.AddrPort]int{}
		for i, ep := range eps {
			index[ep.Addr] = i
		}
		run := func(p balance.Picker, n int) []int {
			count := make([]int, len(eps))
			for range n {
				ep, done, err := p.Pick()
				if err != nil {
					t.Fatal(err)
				}
				lat := 800*time.Microsecond + time.Duration(r.Int64N(int64(400*time.Microsecond)))
				clk.Advance(lat)
				done(balance.DoneInfo{Latency: lat})
				count[index[ep.Addr]]++
				clk.Advance(4 * ms)
			}
			return count
		}
		run(b.Build(eps[:3]), 2000) // warm: the three estimates settle near 1ms
		count := run(b.Build(endpoints(4)), 200)
		t.Logf("seed %d: %v of 200 after the scale-up", seed, count)
		if count[3] < 30 { // a fair share is 50
			t.Errorf("seed %d: the new endpoint got %d of 200 requests, want at least 30", seed, count[3])
		}
	}
}

// Concurrent Builds over the same new endpoints, with picks on the Pickers already built, seed each endpoint once.
func TestConcurrentBuilds(t *testing.T) {
	b := ewma.NewBuilder(ewma.Options{Now: newClock().Now, IntN: lockedRand(5)})
	eps := endpoints(6)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			p := b.Build(eps[g%3 : g%3+4])
			for range 200 {
				_, done, _ := p.Pick()
				done(balance.DoneInfo{})
			}
		})
	}
	wg.Wait()
	for _, ep := range eps {
		if got := estimate(t, b, ep); got != ewma.DefaultRTT {
			t.Errorf("%v: estimate %v, want %v (no samples, no established peer)", ep.Addr, got, ewma.DefaultRTT)
		}
	}
}

func TestConcurrentPicks(t *testing.T) {
	clk := newClock()
	b := ewma.NewBuilder(ewma.Options{Now: clk.Now, IntN: lockedRand(3)})
	eps := endpoints(5)
	p := b.Build(eps)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				_, done, err := p.Pick()
				if err != nil {
					t.Error(err)
					return
				}
				if i%100 == 0 {
					clk.Advance(ms)
				}
				done(balance.DoneInfo{Latency: time.Duration(g+1) * ms, Failed: i%7 == 0})
			}
		})
	}
	wg.Wait()
	for _, ep := range eps {
		rtt, pending, _ := b.Estimate(ep.Addr)
		if pending != 0 || rtt <= 0 || rtt > ewma.DefaultRTT { // samples of 1-8ms, over ~20ms of a 10s decay
			t.Fatalf("%v: estimate %v, %d in flight", ep.Addr, rtt, pending)
		}
	}
}

// An endpoint that left every live Picker is forgotten once it is idle and Retain has passed; one with a request in
// flight is kept until that request ends.
func TestRemovedEndpointForgotten(t *testing.T) {
	clk := newClock()
	b := ewma.NewBuilder(ewma.Options{Now: clk.Now, Retain: time.Minute})
	eps := endpoints(2)
	done := func() func(balance.DoneInfo) {
		p := b.Build(eps)
		for {
			ep, done, _ := p.Pick()
			if ep == eps[1] {
				return done
			}
			done(balance.DoneInfo{})
		}
	}()
	live := b.Build(eps[:1]) // the next snapshot no longer has endpoint 1
	for range 20 {
		runtime.GC()
		time.Sleep(time.Millisecond)
		clk.Advance(time.Hour)
		b.Build(nil) // builds sweep
	}
	if _, pending, ok := b.Estimate(eps[1].Addr); !ok || pending != 1 {
		t.Fatalf("endpoint with a request in flight forgotten (ok %v, pending %d)", ok, pending)
	}
	done(balance.DoneInfo{Latency: ms})
	b.Build(nil)
	if _, _, ok := b.Estimate(eps[1].Addr); ok {
		t.Fatal("removed idle endpoint still kept after Retain")
	}
	if _, _, ok := b.Estimate(eps[0].Addr); !ok {
		t.Fatal("live endpoint forgotten")
	}
	runtime.KeepAlive(live)
}
