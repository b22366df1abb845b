package balance_test

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"go.uber.org/goleak"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/balance/accrual"
	"github.com/trellis-mesh/trellis/proxy/balance/ewma"
	"github.com/trellis-mesh/trellis/proxy/balance/leastrequest"
	"github.com/trellis-mesh/trellis/proxy/balance/random"
	"github.com/trellis-mesh/trellis/proxy/balance/roundrobin"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func endpoints(n int) []*balance.Endpoint {
	eps := make([]*balance.Endpoint, n)
	for i := range eps {
		eps[i] = balance.NewEndpoint(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 80), "", "")
	}
	return eps
}

func TestPickers(t *testing.T) {
	seq := 0
	fixed := func(n int) int { seq++; return (seq * 2) % n }
	tests := []struct {
		name  string
		build balance.Builder
		want  []int // indexes of the endpoints picked, in order
	}{
		{"roundrobin", roundrobin.New, []int{0, 1, 2, 0, 1, 2}},
		{"random", func(e []*balance.Endpoint) balance.Picker { return random.NewWithRand(e, fixed) },
			[]int{2, 1, 0, 2, 1, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eps := endpoints(3)
			p := tt.build(eps)
			for i, w := range tt.want {
				ep, done, err := p.Pick()
				if err != nil || ep != eps[w] {
					t.Fatalf("pick %d = %v, %v; want %v", i, ep, err, eps[w].Addr)
				}
				done(balance.DoneInfo{})
			}
			empty := tt.build(nil)
			if _, done, err := empty.Pick(); !errors.Is(err, balance.ErrNoEndpoints) || done == nil {
				t.Fatalf("empty picker: %v", err)
			}
		})
	}
}

// Every algorithm answers ErrNoEndpoints with a usable done for an empty set, and picks the only endpoint of a set of
// one.
func TestAllPickersEdges(t *testing.T) {
	for name, build := range builders() {
		t.Run(name, func(t *testing.T) {
			if _, done, err := build(nil).Pick(); !errors.Is(err, balance.ErrNoEndpoints) || done == nil {
				t.Fatalf("empty: err %v, done nil %v", err, done == nil)
			} else {
				done(balance.DoneInfo{Err: err})
			}
			eps := endpoints(1)
			p := build(eps)
			for range 5 {
				ep, done, err := p.Pick()
				if err != nil || ep != eps[0] {
					t.Fatalf("one endpoint: %v, %v", ep, err)
				}
				done(balance.DoneInfo{})
			}
		})
	}
}

func TestDoneInfoFailure(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		d    balance.DoneInfo
		want bool
	}{
		{balance.DoneInfo{}, false},
		{balance.DoneInfo{Latency: 1}, false},
		{balance.DoneInfo{Err: errBoom}, true},
		{balance.DoneInfo{Failed: true}, true},
		{balance.DoneInfo{Err: errBoom, Failed: true}, true},
		{balance.DoneInfo{Err: errBoom, Canceled: true}, false},
		{balance.DoneInfo{Failed: true, Canceled: true}, false},
		{balance.DoneInfo{Canceled: true}, false},
	}
	for _, tt := range tests {
		if got := tt.d.Failure(); got != tt.want {
			t.Errorf("%+v.Failure() = %v, want %v", tt.d, got, tt.want)
		}
	}
}

// builders returns every algorithm, plain and wrapped in failure accrual, each with fresh state.
func builders() map[string]balance.Builder {
	m := map[string]balance.Builder{
		"roundrobin":   roundrobin.New,
		"random":       random.New,
		"leastrequest": leastrequest.NewBuilder(leastrequest.Options{}).Build,
		"ewma":         ewma.NewBuilder(ewma.Options{}).Build,
	}
	for name, b := range m {
		m[name+"+accrual"] = accrual.NewBuilder(b, accrual.Options{}).Build
	}
	return m
}

// BenchmarkPickDone measures one Pick and its done callback, as a relay makes them for every request.
func BenchmarkPickDone(b *testing.B) {
	for _, algo := range []string{"roundrobin", "leastrequest", "ewma"} {
		for _, wrap := range []string{"", "+accrual"} {
			for _, n := range []int{3, 30, 300} {
				p := builders()[algo+wrap](endpoints(n))
				b.Run(fmt.Sprintf("%s%s/%d", algo, wrap, n), func(b *testing.B) {
					b.ReportAllocs()
					d := balance.DoneInfo{Latency: 1000000}
					for b.Loop() {
						_, done, _ := p.Pick()
						done(d)
					}
				})
			}
		}
	}
}

// BenchmarkPickDoneParallel is BenchmarkPickDone with every CPU picking from one Picker of 30 endpoints.
func BenchmarkPickDoneParallel(b *testing.B) {
	for _, algo := range []string{"roundrobin", "leastrequest", "ewma"} {
		for _, wrap := range []string{"", "+accrual"} {
			p := builders()[algo+wrap](endpoints(30))
			b.Run(algo+wrap+"/30", func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					d := balance.DoneInfo{Latency: 1000000}
					for pb.Next() {
						_, done, _ := p.Pick()
						done(d)
					}
				})
			})
		}
	}
}
