package accrual_test

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/balance/accrual"
	"github.com/trellis-mesh/trellis/proxy/balance/ewma"
	"github.com/trellis-mesh/trellis/proxy/balance/leastrequest"
	"github.com/trellis-mesh/trellis/proxy/balance/roundrobin"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeClock struct {
	base time.Time
	off  atomic.Int64
}

func newClock() *fakeClock                   { return &fakeClock{base: time.Unix(1_700_000_000, 0)} }
func (c *fakeClock) Now() time.Time          { return c.base.Add(time.Duration(c.off.Load())) }
func (c *fakeClock) Advance(d time.Duration) { c.off.Add(int64(d)) }

func endpoints(n int) []*balance.Endpoint {
	eps := make([]*balance.Endpoint, n)
	for i := range eps {
		eps[i] = balance.NewEndpoint(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80), "", "")
	}
	return eps
}

var (
	errConnect = errors.New("connection refused")
	failure    = balance.DoneInfo{Err: errConnect}
	success    = balance.DoneInfo{}
)

// lowest makes every backoff the lowest its jitter allows: ceiling/2, within [min, max].
func lowest(int64) int64 { return 0 }

type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) Transition(addr netip.AddrPort, from, to accrual.State, backoff time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, addr.String()+" "+from.String()+"->"+to.String()+" "+backoff.String())
}

type fixture struct {
	clk *fakeClock
	b   *accrual.Builder
	eps []*balance.Endpoint
	p   balance.Picker
	obs *recorder
}

func newFixture(t *testing.T, n int, o accrual.Options) *fixture {
	t.Helper()
	f := &fixture{clk: newClock(), eps: endpoints(n), obs: &recorder{}}
	o.Now, o.Observer = f.clk.Now, f.obs
	if o.Int64N == nil {
		o.Int64N = lowest
	}
	f.b = accrual.NewBuilder(roundrobin.New, o)
	f.p = f.b.Build(f.eps)
	return f
}

// report picks until ep comes up and completes that pick with d; other picks succeed. It fails the test if ep is not
// picked within a full round.
func (f *fixture) report(t *testing.T, ep *balance.Endpoint, d balance.DoneInfo) {
	t.Helper()
	for range 2 * len(f.eps) {
		got, done, err := f.p.Pick()
		if err != nil {
			t.Fatal(err)
		}
		if got == ep {
			done(d)
			return
		}
		done(success)
	}
	t.Fatalf("%v not picked", ep.Addr)
}

// picks returns how many of n picks (completed with success) went to each endpoint.
func (f *fixture) picks(t *testing.T, n int) map[*balance.Endpoint]int {
	t.Helper()
	m := map[*balance.Endpoint]int{}
	for range n {
		ep, done, err := f.p.Pick()
		if err != nil {
			t.Fatal(err)
		}
		m[ep]++
		done(success)
	}
	return m
}

func (f *fixture) state(t *testing.T, ep *balance.Endpoint) accrual.State {
	t.Helper()
	s, ok := f.b.State(ep.Addr)
	if !ok {
		t.Fatalf("no state for %v", ep.Addr)
	}
	return s
}

func TestEjectsAfterExactlyNConsecutiveFailures(t *testing.T) {
	for _, n := range []int{1, 3, accrual.DefaultConsecutiveFailures} {
		f := newFixture(t, 3, accrual.Options{ConsecutiveFailures: n})
		if n == accrual.DefaultConsecutiveFailures {
			f = newFixture(t, 3, accrual.Options{}) // the default
		}
		a := f.eps[0]
		for i := range n - 1 {
			f.report(t, a, failure)
			if s := f.state(t, a); s != accrual.Healthy {
				t.Fatalf("n=%d: %s after %d failures", n, s, i+1)
			}
		}
		f.report(t, a, failure)
		if s := f.state(t, a); s != accrual.Ejected {
			t.Fatalf("n=%d: %s after %d failures, want ejected", n, s, n)
		}
		if got := f.picks(t, 30); got[a] != 0 || got[f.eps[1]] != 15 {
			t.Fatalf("n=%d: picks after ejection %v", n, got)
		}
		if st := f.b.Stats(); st.Ejected != 1 || st.Ejections != 1 {
			t.Fatalf("n=%d: stats %+v", n, st)
		}
	}
}

func TestOnlyConsecutiveFailuresCount(t *testing.T) {
	tests := []struct {
		name     string
		outcomes []balance.DoneInfo
		want     accrual.State
	}{
		{"six failures", slices.Repeat([]balance.DoneInfo{failure}, 6), accrual.Healthy},
		{"seven failures", slices.Repeat([]balance.DoneInfo{failure}, 7), accrual.Ejected},
		{"Failed flag counts", slices.Repeat([]balance.DoneInfo{{Failed: true}}, 7), accrual.Ejected},
		{"a success resets", append(append(slices.Repeat([]balance.DoneInfo{failure}, 6), success),
			slices.Repeat([]balance.DoneInfo{failure}, 6)...), accrual.Healthy},
		{"success then seven", append([]balance.DoneInfo{success}, slices.Repeat([]balance.DoneInfo{failure}, 7)...),
			accrual.Ejected},
		{"canceled neither counts nor resets", append(append(slices.Repeat([]balance.DoneInfo{failure}, 6),
			balance.DoneInfo{Err: errConnect, Canceled: true}), failure), accrual.Ejected},
		{"canceled failures do not eject", slices.Repeat([]balance.DoneInfo{{Err: errConnect, Canceled: true}}, 20),
			accrual.Healthy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 3, accrual.Options{})
			for _, d := range tt.outcomes {
				f.report(t, f.eps[1], d)
			}
			if s := f.state(t, f.eps[1]); s != tt.want {
				t.Fatalf("state %s, want %s", s, tt.want)
			}
		})
	}
}

// Outcomes arriving interleaved from concurrent requests count in the order the done calls are made.
func TestInterleavedOutcomes(t *testing.T) {
	f := newFixture(t, 1, accrual.Options{ConsecutiveFailures: 3})
	var dones []func(balance.DoneInfo)
	for range 4 {
		_, done, _ := f.p.Pick()
		dones = append(dones, done)
	}
	dones[0](failure)
	dones[1](failure)
	dones[2](success)
	dones[3](failure)
	if s := f.state(t, f.eps[0]); s != accrual.Healthy {
		t.Fatalf("state %s", s)
	}
}

func TestBackoff(t *testing.T) {
	b := accrual.NewBuilder(roundrobin.New, accrual.Options{Int64N: lowest})
	hi := accrual.NewBuilder(roundrobin.New, accrual.Options{Int64N: func(n int64) int64 { return n - 1 }})
	s := time.Second
	want := []struct{ lo, hi time.Duration }{
		{1 * s, 2 * s}, {2 * s, 4 * s}, {4 * s, 8 * s}, {8 * s, 16 * s}, {16 * s, 32 * s}, {30 * s, 60 * s},
		{30 * s, 60 * s}, {30 * s, 60 * s},
	}
	for k, w := range want {
		if got := b.Backoff(k); got != w.lo {
			t.Errorf("backoff %d lowest %v, want %v", k, got, w.lo)
		}
		if got := hi.Backoff(k); got != w.hi {
			t.Errorf("backoff %d highest %v, want %v", k, got, w.hi)
		}
	}
	if got := b.Backoff(1000); got != 30*s {
		t.Errorf("backoff 1000: %v", got)
	}

	// With real jitter every backoff lies in [min, max] and in its level's range, and the mean doubles.
	r := rand.New(rand.NewPCG(1, 2))
	var mu sync.Mutex
	j := accrual.NewBuilder(roundrobin.New, accrual.Options{Int64N: func(n int64) int64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Int64N(n)
	}})
	var prevMean time.Duration
	for k, w := range want[:5] {
		var sum time.Duration
		for range 1000 {
			d := j.Backoff(k)
			if d < w.lo || d > w.hi || d < accrual.DefaultMinBackoff || d > accrual.DefaultMaxBackoff {
				t.Fatalf("backoff %d = %v, outside [%v, %v]", k, d, w.lo, w.hi)
			}
			sum += d
		}
		mean := sum / 1000
		if k > 0 && (mean < prevMean*19/10 || mean > prevMean*21/10) {
			t.Errorf("mean backoff %d = %v, previous %v: not doubling", k, mean, prevMean)
		}
		prevMean = mean
	}

	// Degenerate bounds stay within them.
	same := accrual.NewBuilder(roundrobin.New, accrual.Options{MinBackoff: s, MaxBackoff: s, Int64N: lowest})
	if got := same.Backoff(3); got != s {
		t.Errorf("min = max: %v", got)
	}
}

func TestHalfOpenProbeAndRecovery(t *testing.T) {
	f := newFixture(t, 3, accrual.Options{})
	a := f.eps[0]
	for range 7 {
		f.report(t, a, failure)
	}
	// Ejected for 1s (lowest jitter at level 0).
	f.clk.Advance(999 * time.Millisecond)
	if got := f.picks(t, 10); got[a] != 0 {
		t.Fatalf("picked before the backoff expired: %v", got)
	}
	f.clk.Advance(time.Millisecond)
	ep, probe, _ := f.p.Pick()
	if ep != a {
		t.Fatalf("first pick after the backoff went to %v, want the probe to %v", ep.Addr, a.Addr)
	}
	if s := f.state(t, a); s != accrual.Probing {
		t.Fatalf("state %s during the probe", s)
	}
	// One probe at a time: while it is in flight, the endpoint gets nothing else.
	f.clk.Advance(time.Hour)
	if got := f.picks(t, 20); got[a] != 0 {
		t.Fatalf("picked during the probe: %v", got)
	}
	probe(success)
	if s := f.state(t, a); s != accrual.Healthy {
		t.Fatalf("state %s after a successful probe", s)
	}
	if got := f.picks(t, 30); got[a] != 10 {
		t.Fatalf("picks after recovery %v", got)
	}
	// The failure count and the backoff were reset: six failures do not eject, seven eject for 1s again.
	for range 6 {
		f.report(t, a, failure)
	}
	if s := f.state(t, a); s != accrual.Healthy {
		t.Fatalf("state %s after six failures following a recovery", s)
	}
	f.report(t, a, failure)
	f.clk.Advance(time.Second)
	if ep, done, _ := f.p.Pick(); ep != a {
		t.Fatalf("no probe 1s after the second ejection (backoff not reset)")
	} else {
		done(success)
	}
	st := f.b.Stats()
	if st.Ejected != 0 || st.Ejections != 2 || st.Probes != 2 || st.Recoveries != 2 || st.PanicPicks != 0 {
		t.Fatalf("stats %+v", st)
	}
	want := []string{
		"10.0.0.1:80 healthy->ejected 1s", "10.0.0.1:80 ejected->probing 0s", "10.0.0.1:80 probing->healthy 0s",
		"10.0.0.1:80 healthy->ejected 1s", "10.0.0.1:80 ejected->probing 0s", "10.0.0.1:80 probing->healthy 0s",
	}
	if !slices.Equal(f.obs.events, want) {
		t.Fatalf("observer saw\n%q\nwant\n%q", f.obs.events, want)
	}
}

func TestFailedProbeBacksOffLonger(t *testing.T) {
	f := newFixture(t, 2, accrual.Options{})
	a := f.eps[0]
	for range 7 {
		f.report(t, a, failure)
	}
	for k, backoff := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		f.clk.Advance(backoff - time.Millisecond)
		if got := f.picks(t, 4); got[a] != 0 {
			t.Fatalf("ejection %d: picked before %v", k, backoff)
		}
		f.clk.Advance(time.Millisecond)
		ep, probe, _ := f.p.Pick()
		if ep != a {
			t.Fatalf("ejection %d: no probe after %v", k, backoff)
		}
		probe(balance.DoneInfo{Failed: true})
		if s := f.state(t, a); s != accrual.Ejected {
			t.Fatalf("state %s after a failed probe", s)
		}
	}
	if st := f.b.Stats(); st.Ejections != 5 || st.Probes != 4 || st.Ejected != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A canceled probe says nothing: the endpoint is probed again at once, with the same backoff level.
func TestCanceledProbe(t *testing.T) {
	f := newFixture(t, 2, accrual.Options{})
	a := f.eps[0]
	for range 7 {
		f.report(t, a, failure)
	}
	f.clk.Advance(time.Second)
	_, probe, _ := f.p.Pick()
	probe(balance.DoneInfo{Err: errConnect, Canceled: true})
	ep, probe, _ := f.p.Pick()
	if ep != a {
		t.Fatal("no new probe after a canceled one")
	}
	probe(failure)
	f.clk.Advance(2*time.Second - time.Millisecond) // level 1: 2s, the canceled probe did not raise it
	if got := f.picks(t, 4); got[a] != 0 {
		t.Fatal("probed before the second backoff")
	}
	f.clk.Advance(time.Millisecond)
	if ep, _, _ := f.p.Pick(); ep != a {
		t.Fatal("second backoff longer than 2s")
	}
}

func TestPanicModeWhenAllEjected(t *testing.T) {
	f := newFixture(t, 2, accrual.Options{ConsecutiveFailures: 1})
	f.report(t, f.eps[0], failure)
	f.clk.Advance(500 * time.Millisecond)
	f.report(t, f.eps[1], failure)
	for _, ep := range f.eps {
		if s := f.state(t, ep); s != accrual.Ejected {
			t.Fatalf("%v: %s", ep.Addr, s)
		}
	}
	// Every endpoint is out: picks go to all of them rather than failing; their outcomes change nothing.
	m := map[*balance.Endpoint]int{}
	for range 10 {
		ep, done, err := f.p.Pick()
		if err != nil {
			t.Fatalf("panic pick: %v", err)
		}
		m[ep]++
		done(failure)
	}
	if m[f.eps[0]] != 5 || m[f.eps[1]] != 5 {
		t.Fatalf("panic picks %v", m)
	}
	st := f.b.Stats()
	if st.PanicPicks != 10 || st.Ejections != 2 || st.Ejected != 2 {
		t.Fatalf("stats %+v", st)
	}
	// Once a backoff expires the probe goes first; its success ends panic mode.
	f.clk.Advance(500 * time.Millisecond)
	ep, probe, _ := f.p.Pick()
	if ep != f.eps[0] {
		t.Fatalf("probe to %v, want the first ejected", ep.Addr)
	}
	if f.b.Stats().PanicPicks != 10 {
		t.Fatal("probe counted as a panic pick")
	}
	probe(success)
	if got := f.picks(t, 10); got[ep] != 10 {
		t.Fatalf("after recovery of %v: %v", ep.Addr, got)
	}
	if f.b.Stats().PanicPicks != 10 {
		t.Fatal("panic picks after a recovery")
	}
}

func TestSingleEndpointPanics(t *testing.T) {
	f := newFixture(t, 1, accrual.Options{ConsecutiveFailures: 2})
	f.report(t, f.eps[0], failure)
	f.report(t, f.eps[0], failure)
	if ep, _, err := f.p.Pick(); err != nil || ep != f.eps[0] {
		t.Fatalf("pick %v, %v", ep, err)
	}
	if f.b.Stats().PanicPicks != 1 {
		t.Fatal("not counted as a panic pick")
	}
}

// Accrual state lives in the Builder: a new snapshot's Picker over the same addresses keeps the ejection, and there
// is one probe at a time across all Pickers.
func TestStateSurvivesRebuild(t *testing.T) {
	f := newFixture(t, 3, accrual.Options{})
	for range 7 {
		f.report(t, f.eps[0], failure)
	}
	next := endpoints(3)
	f.p = f.b.Build(next)
	if s := f.state(t, next[0]); s != accrual.Ejected {
		t.Fatalf("state after rebuild %s", s)
	}
	if got := f.picks(t, 10); got[next[0]] != 0 {
		t.Fatalf("ejected endpoint picked after rebuild: %v", got)
	}
	other := f.b.Build(endpoints(2))
	f.clk.Advance(time.Second)
	if ep, _, _ := other.Pick(); ep.Addr != next[0].Addr {
		t.Fatal("no probe from the other picker")
	}
	if got := f.picks(t, 10); got[next[0]] != 0 {
		t.Fatalf("second probe while one is in flight: %v", got)
	}
}

// The wrapper works around every algorithm and calls the inner done exactly once.
func TestWrapsAlgorithms(t *testing.T) {
	clk := newClock()
	lr := leastrequest.NewBuilder(leastrequest.Options{})
	ew := ewma.NewBuilder(ewma.Options{Now: clk.Now})
	for name, inner := range map[string]balance.Builder{"leastrequest": lr.Build, "ewma": ew.Build,
		"roundrobin": roundrobin.New} {
		t.Run(name, func(t *testing.T) {
			b := accrual.NewBuilder(inner, accrual.Options{Now: clk.Now, Int64N: lowest})
			eps := endpoints(3)
			p := b.Build(eps)
			for i := 0; i < 7; {
				ep, done, _ := p.Pick()
				if ep == eps[2] {
					done(balance.DoneInfo{Err: errConnect, Latency: time.Millisecond})
					i++
				} else {
					done(balance.DoneInfo{Latency: time.Millisecond})
				}
			}
			for range 100 {
				ep, done, _ := p.Pick()
				if ep == eps[2] {
					t.Fatal("ejected endpoint picked")
				}
				done(balance.DoneInfo{Latency: time.Millisecond})
			}
			clk.Advance(time.Second)
			ep, probe, _ := p.Pick()
			if ep != eps[2] {
				t.Fatal("no probe")
			}
			probe(balance.DoneInfo{Latency: time.Millisecond})
			for _, ep := range eps {
				if n, _ := lr.Pending(ep.Addr); n != 0 {
					t.Fatalf("%v: %d in flight in leastrequest", ep.Addr, n)
				}
				if _, n, _ := ew.Estimate(ep.Addr); n != 0 {
					t.Fatalf("%v: %d in flight in ewma", ep.Addr, n)
				}
			}
		})
	}
}

func TestEmpty(t *testing.T) {
	b := accrual.NewBuilder(roundrobin.New, accrual.Options{})
	if _, done, err := b.Build(nil).Pick(); !errors.Is(err, balance.ErrNoEndpoints) || done == nil {
		t.Fatalf("empty: %v", err)
	}
}

// Many goroutines picking, failing and recovering while time passes: no data race, every endpoint stays in a valid
// state, and with every pick completed nothing is left in flight in the inner picker.
func TestConcurrent(t *testing.T) {
	clk := newClock()
	lr := leastrequest.NewBuilder(leastrequest.Options{})
	b := accrual.NewBuilder(lr.Build, accrual.Options{Now: clk.Now, ConsecutiveFailures: 3})
	eps := endpoints(5)
	var cur atomic.Pointer[balance.Picker]
	p := b.Build(eps)
	cur.Store(&p)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 3000 {
				ep, done, err := (*cur.Load()).Pick()
				if err != nil {
					t.Error(err)
					return
				}
				bad := ep.Addr == eps[0].Addr || ep.Addr == eps[1].Addr && r.IntN(2) == 0
				done(balance.DoneInfo{Failed: bad})
				if i%50 == 0 {
					clk.Advance(100 * time.Millisecond)
				}
				if i%500 == 0 && g == 0 { // a reload while the others pick from the old picker
					next := b.Build(endpoints(5))
					cur.Store(&next)
				}
			}
		})
	}
	wg.Wait()
	for _, ep := range eps {
		if n, _ := lr.Pending(ep.Addr); n != 0 {
			t.Fatalf("%v: %d in flight", ep.Addr, n)
		}
	}
	if s, _ := b.State(eps[0].Addr); s == accrual.Healthy {
		t.Fatal("an always failing endpoint ended healthy")
	}
	if st := b.Stats(); st.Ejections == 0 || st.Probes == 0 {
		t.Fatalf("stats %+v", st)
	}
}
