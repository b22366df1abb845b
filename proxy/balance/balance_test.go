package balance_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/balance/random"
	"github.com/trellis-mesh/trellis/proxy/balance/roundrobin"
)

func endpoints(n int) []*balance.Endpoint {
	eps := make([]*balance.Endpoint, n)
	for i := range eps {
		eps[i] = &balance.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80)}
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
		{"random", func(e []*balance.Endpoint) balance.Picker { return random.NewWithRand(e, fixed) }, []int{2, 1, 0, 2, 1, 0}},
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

func BenchmarkPick(b *testing.B) {
	for name, build := range map[string]balance.Builder{"roundrobin": roundrobin.New, "random": random.New} {
		p := build(endpoints(10))
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, done, _ := p.Pick()
				done(balance.DoneInfo{})
			}
		})
	}
}
