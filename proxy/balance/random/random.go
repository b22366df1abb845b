// Package random picks endpoints uniformly at random.
package random

import (
	"math/rand/v2"

	"github.com/trellis-mesh/trellis/proxy/balance"
)

type picker struct {
	endpoints []*balance.Endpoint
	intn      func(n int) int
}

var _ balance.Picker = (*picker)(nil)

// New returns a Picker that chooses uniformly with math/rand/v2.
func New(endpoints []*balance.Endpoint) balance.Picker { return NewWithRand(endpoints, rand.IntN) }

// NewWithRand returns a Picker that chooses with intn, which returns a number in [0, n); tests inject it.
func NewWithRand(endpoints []*balance.Endpoint, intn func(n int) int) balance.Picker {
	return &picker{endpoints: endpoints, intn: intn}
}

// Pick returns a random endpoint.
func (p *picker) Pick() (*balance.Endpoint, func(balance.DoneInfo), error) {
	if len(p.endpoints) == 0 {
		return nil, balance.NoopDone, balance.ErrNoEndpoints
	}
	return p.endpoints[p.intn(len(p.endpoints))], balance.NoopDone, nil
}
