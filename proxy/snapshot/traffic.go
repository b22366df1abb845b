package snapshot

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/balance/accrual"
	"github.com/trellis-mesh/trellis/proxy/balance/ewma"
	"github.com/trellis-mesh/trellis/proxy/balance/leastrequest"
	"github.com/trellis-mesh/trellis/proxy/balance/random"
	"github.com/trellis-mesh/trellis/proxy/balance/roundrobin"
	"github.com/trellis-mesh/trellis/proxy/circuit"
	"github.com/trellis-mesh/trellis/proxy/metrics"
	"github.com/trellis-mesh/trellis/proxy/retry"
)

// TrafficOptions configure NewTraffic. The zero value uses the real clock and randomness and the algorithms'
// defaults.
type TrafficOptions struct {
	// Now is the clock of the balancers, failure accrual and retry budgets. Default time.Now.
	Now func() time.Time
	// IntN returns a uniform random int in [0, n) for the balancers; it must be safe for concurrent use. Default
	// math/rand/v2.IntN.
	IntN func(n int) int
	// Int64N returns a uniform random int64 in [0, n) for ejection and retry backoff jitter; it must be safe for
	// concurrent use. Default math/rand/v2.Int64N.
	Int64N func(n int64) int64
	// EWMA tunes the peak-EWMA balancer (DefaultRTT, Decay, Retain); its Now and IntN are the fields above.
	// Default: Linkerd's (30 ms, 10 s).
	EWMA ewma.Options
	// Retain is how long the state of a service (failure accrual, retry budget, circuit breaker) is kept after it
	// left the configuration. Default balance.DefaultRetain (1 minute).
	Retain time.Duration
}

// Traffic is the outbound traffic-management state that outlives configuration snapshots: the peak-EWMA and
// least-request builders (per-endpoint latency and requests in flight, by address), and per service its
// failure-accrual builder (around the service's balancer), retry budget and circuit breaker. Create one per proxy and
// give it to every Compile: a Picker compiled for a new snapshot then finds the same endpoint state, an ejected
// endpoint stays ejected, and the budget keeps its window. It is safe for concurrent use.
type Traffic struct {
	o     TrafficOptions
	ewma  *ewma.Builder
	least *leastrequest.Builder

	mu       sync.Mutex
	services map[serviceKey]*serviceState
}

type serviceKey struct {
	namespace, name string
	port            int32
}

// accrualSettings are the failure-accrual options a service's builder was made with.
type accrualSettings struct {
	failures int
	min, max time.Duration
}

// budgetSettings are the retry-budget options a service's budget was made with.
type budgetSettings struct {
	ratio, minPerSecond float64
	ttl                 time.Duration
}

// serviceState is the lasting state of one service port.
type serviceState struct {
	namespace, name string
	lb              string
	accrualOpts     accrualSettings
	accrual         *accrual.Builder
	budgetOpts      budgetSettings
	budget          *retry.Budget
	breaker         *circuit.Breaker
	seen            time.Time // last Compile that included the service
}

// NewTraffic returns an empty Traffic.
func NewTraffic(o TrafficOptions) *Traffic {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.IntN == nil {
		o.IntN = rand.IntN
	}
	if o.Int64N == nil {
		o.Int64N = rand.Int64N
	}
	if o.Retain <= 0 {
		o.Retain = balance.DefaultRetain
	}
	eo := o.EWMA
	eo.Now, eo.IntN = o.Now, o.IntN
	return &Traffic{
		o:        o,
		ewma:     ewma.NewBuilder(eo),
		least:    leastrequest.NewBuilder(leastrequest.Options{Now: o.Now, IntN: o.IntN}),
		services: map[serviceKey]*serviceState{},
	}
}

// EWMA returns the shared peak-EWMA builder (its Estimate reads an endpoint's latency estimate).
func (t *Traffic) EWMA() *ewma.Builder { return t.ewma }

// inner returns the balancer builder named lb.
func (t *Traffic) inner(lb string) balance.Builder {
	switch lb {
	case proxyconfig.LoadBalancerLeastRequest:
		return t.least.Build
	case proxyconfig.LoadBalancerRoundRobin:
		return roundrobin.New
	case proxyconfig.LoadBalancerRandom:
		intn := t.o.IntN
		return func(eps []*balance.Endpoint) balance.Picker { return random.NewWithRand(eps, intn) }
	}
	return t.ewma.Build
}

// service returns (a copy of) the lasting state of a service port, made or updated for the document's settings. A change of
// balancer or failure-accrual settings starts the service's accrual state afresh (endpoint latency, kept by the
// shared builders, stays); a change of budget settings starts a new budget; limits change in place.
func (t *Traffic) service(cs *proxyconfig.Service, d *proxyconfig.Defaults) (serviceState, error) {
	lb := cmp.Or(cs.LoadBalancer, d.LoadBalancer)
	fa := d.FailureAccrual
	if cs.FailureAccrual != nil {
		fa = cs.FailureAccrual
	}
	as := accrualSettings{failures: int(*fa.ConsecutiveFailures), min: fa.MinBackoff.Duration, max: fa.MaxBackoff.Duration}
	rb := d.RetryBudget
	bs := budgetSettings{ratio: *rb.Ratio, minPerSecond: float64(*rb.MinRetriesPerSecond), ttl: rb.TTL.Duration}
	limits := circuit.Unlimited
	if cs.MaxRequests != nil {
		limits.MaxRequests = int64(*cs.MaxRequests)
	}
	if cs.MaxPendingRequests != nil {
		limits.MaxPending = int64(*cs.MaxPendingRequests)
	}
	if cs.MaxConnections != nil {
		limits.MaxConnections = int64(*cs.MaxConnections)
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.o.Now()
	t.sweepLocked(now)
	k := serviceKey{cs.Namespace, cs.Name, cs.Port}
	st := t.services[k]
	if st == nil {
		st = &serviceState{namespace: cs.Namespace, name: cs.Name, breaker: circuit.New(limits)}
		t.services[k] = st
	} else if st.breaker.Limits() != limits {
		st.breaker.SetLimits(limits)
	}
	st.seen = now
	if st.accrual == nil || st.lb != lb || st.accrualOpts != as {
		st.lb, st.accrualOpts = lb, as
		st.accrual = accrual.NewBuilder(t.inner(lb), accrual.Options{ConsecutiveFailures: as.failures,
			MinBackoff: as.min, MaxBackoff: as.max, Now: t.o.Now, Int64N: t.o.Int64N})
	}
	if st.budget == nil || st.budgetOpts != bs {
		b, err := retry.NewBudget(retry.BudgetOptions{Ratio: bs.ratio, MinPerSecond: bs.minPerSecond, TTL: bs.ttl,
			Now: t.o.Now})
		if err != nil {
			return serviceState{}, err
		}
		st.budgetOpts, st.budget = bs, b
	}
	return *st, nil
}

// sweepLocked forgets services that no Compile has included for Retain. Snapshots still in use keep their own
// references.
func (t *Traffic) sweepLocked(now time.Time) {
	for k, st := range t.services {
		if now.Sub(st.seen) >= t.o.Retain {
			delete(t.services, k)
		}
	}
}

// Stats returns each service's figures for metrics, summed over its ports, sorted by namespace and name.
func (t *Traffic) Stats() []metrics.ServiceStats {
	t.mu.Lock()
	states := make([]serviceState, 0, len(t.services))
	for _, st := range t.services {
		states = append(states, *st) // accrual and budget may be replaced by a later Compile
	}
	t.mu.Unlock()
	byName := map[[2]string]*metrics.ServiceStats{}
	var out []*metrics.ServiceStats
	for i := range states {
		st := &states[i]
		k := [2]string{st.namespace, st.name}
		s := byName[k]
		if s == nil {
			s = &metrics.ServiceStats{Namespace: st.namespace, Service: st.name}
			byName[k] = s
			out = append(out, s)
		}
		a := st.accrual.Stats()
		s.EjectedEndpoints += a.Ejected
		s.Ejections += a.Ejections
		s.Probes += a.Probes
		s.Recoveries += a.Recoveries
		s.PanicPicks += a.PanicPicks
		s.RetryBudget += st.budget.Balance()
		s.RequestsInFlight += st.breaker.InFlight()
		s.RequestsWaiting += st.breaker.Waiting()
		s.Connections += st.breaker.Connections()
	}
	slices.SortFunc(out, func(a, b *metrics.ServiceStats) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Service, b.Service))
	})
	res := make([]metrics.ServiceStats, len(out))
	for i, s := range out {
		res[i] = *s
	}
	return res
}

// Accrual returns the failure-accrual builder of a service port, for tests and debugging.
func (t *Traffic) Accrual(namespace, name string, port int32) *accrual.Builder {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st := t.services[serviceKey{namespace, name, port}]; st != nil {
		return st.accrual
	}
	return nil
}
