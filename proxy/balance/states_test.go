package balance

import (
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct {
	base time.Time
	off  atomic.Int64
}

func newClock() *fakeClock                   { return &fakeClock{base: time.Unix(1_700_000_000, 0)} }
func (c *fakeClock) Now() time.Time          { return c.base.Add(time.Duration(c.off.Load())) }
func (c *fakeClock) Advance(d time.Duration) { c.off.Add(int64(d)) }

func addrs(n int) []*Endpoint {
	eps := make([]*Endpoint, n)
	for i := range eps {
		eps[i] = NewEndpoint(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), 80), "", "")
	}
	return eps
}

type counter struct {
	addr netip.AddrPort
	busy atomic.Bool
}

type owner struct{ states []*counter }

// acquire builds an owner (standing for a Picker) over eps.
func acquire(s *States[counter], eps []*Endpoint) *owner {
	o := &owner{}
	o.states = Acquire(s, o, eps)
	return o
}

// refs returns the references held on addr's state, -1 without state.
func (r *States[S]) refs(addr netip.AddrPort) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.m[addr]; ok {
		return e.refs
	}
	return -1
}

// released runs the garbage collector until addr's state has no references left.
func released(t *testing.T, s *States[counter], addr netip.AddrPort) {
	t.Helper()
	for range 500 {
		runtime.GC()
		if s.refs(addr) <= 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("%v still referenced", addr)
}

func TestStatesSurviveAndExpire(t *testing.T) {
	clk := newClock()
	created := 0
	s := NewStates(StatesOptions[counter]{
		New:    func(ep *Endpoint) *counter { created++; return &counter{addr: ep.Addr} },
		Idle:   func(c *counter) bool { return !c.busy.Load() },
		Retain: time.Minute,
		Now:    clk.Now,
	})
	eps := addrs(3)
	live := map[string]*owner{"first": acquire(s, eps)} // owners stand for pickers of live snapshots
	// A new snapshot makes new Endpoint values with the same addresses: they get the same states.
	live["second"] = acquire(s, addrs(3)[:2])
	first := live["first"].states
	for i := range 2 {
		if first[i] != live["second"].states[i] {
			t.Fatalf("endpoint %d: new state after a rebuild", i)
		}
	}
	if created != 3 {
		t.Fatalf("created %d states, want 3", created)
	}

	// The first picker goes away: endpoint 2 is unreferenced, retained for Retain, then dropped once idle.
	first[2].busy.Store(true)
	delete(live, "first")
	released(t, s, eps[2].Addr)
	clk.Advance(59 * time.Second)
	s.Sweep()
	if s.Len() != 3 {
		t.Fatalf("dropped before Retain: %d states", s.Len())
	}
	clk.Advance(time.Hour)
	s.Sweep()
	if s.Len() != 3 {
		t.Fatal("dropped a busy state")
	}
	first[2].busy.Store(false)
	s.Sweep()
	if _, ok := s.Get(eps[2].Addr); ok || s.Len() != 2 {
		t.Fatalf("endpoint 2 kept after its release (%d states)", s.Len())
	}

	// Released and acquired again within Retain: the same state comes back, and a new one after it was dropped.
	st0 := first[0]
	delete(live, "second")
	released(t, s, eps[0].Addr)
	clk.Advance(30 * time.Second)
	live["third"] = acquire(s, addrs(1))
	if live["third"].states[0] != st0 {
		t.Fatal("state re-created although released less than Retain ago")
	}
	clk.Advance(time.Minute)
	s.Sweep()
	if _, ok := s.Get(eps[1].Addr); ok || s.Len() != 1 {
		t.Fatalf("endpoint 1 kept (%d states)", s.Len())
	}
	if acquire(s, addrs(2)).states[1] == first[1] {
		t.Fatal("dropped state came back")
	}
	runtime.KeepAlive(live)
}

func TestStatesRetainNegativeDropsAtOnce(t *testing.T) {
	s := NewStates(StatesOptions[counter]{New: func(ep *Endpoint) *counter { return &counter{addr: ep.Addr} }, Retain: -1})
	eps := addrs(5)
	func() { acquire(s, eps) }()
	keep := acquire(s, eps[:2])
	released(t, s, eps[4].Addr)
	s.Sweep()
	if s.Len() != 2 {
		t.Fatalf("%d states, want 2", s.Len())
	}
	n := 0
	s.Range(func(netip.AddrPort, *counter) bool { n++; return false })
	if n != 1 {
		t.Fatalf("Range did not stop: %d calls", n)
	}
	runtime.KeepAlive(keep)
}

func TestStatesConcurrent(t *testing.T) {
	s := NewStates(StatesOptions[counter]{New: func(ep *Endpoint) *counter { return &counter{addr: ep.Addr} }, Retain: -1})
	eps := addrs(20)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				lo := (g + i) % 10
				o := acquire(s, eps[lo:lo+10])
				for j, st := range o.states {
					if st.addr != eps[lo+j].Addr {
						t.Errorf("state of %v for %v", st.addr, eps[lo+j].Addr)
						return
					}
				}
				if i%50 == 0 {
					runtime.GC()
				}
			}
		})
	}
	wg.Wait()
	for _, ep := range eps {
		released(t, s, ep.Addr)
	}
	s.Sweep()
	if s.Len() != 0 {
		t.Fatalf("%d states left", s.Len())
	}
}
