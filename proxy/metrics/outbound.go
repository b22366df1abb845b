package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// ServiceStats are one outbound service's traffic-management figures at one moment, read at scrape time.
type ServiceStats struct {
	// Namespace and Service name the service (the dst_namespace and dst_service labels).
	Namespace, Service string
	// EjectedEndpoints is the number of the service's endpoints out of rotation (failure accrual).
	EjectedEndpoints int
	// Ejections, Probes, Recoveries and PanicPicks are the failure accrual's counters.
	Ejections, Probes, Recoveries, PanicPicks uint64
	// RetryBudget is the number of retries the service's budget allows now.
	RetryBudget float64
	// RequestsInFlight and RequestsWaiting are the requests holding and waiting for a circuit-breaker slot;
	// Connections the opaque TCP connections open.
	RequestsInFlight, RequestsWaiting, Connections int64
}

// outbound holds the outbound traffic-management series: counters updated on the request path (retry decisions,
// circuit-breaker rejections) and figures collected at scrape time from a source.
type outbound struct {
	retries  *prometheus.CounterVec
	rejected *prometheus.CounterVec

	mu     sync.Mutex
	source func() []ServiceStats
	descs  []*prometheus.Desc
}

var serviceLabels = []string{"dst_namespace", "dst_service"}

// Indexes of outbound.descs.
const (
	descEjected = iota
	descEjections
	descProbes
	descRecoveries
	descPanic
	descBudget
	descInFlight
	descWaiting
	descConns
)

func newOutbound() *outbound {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, serviceLabels, nil) }
	return &outbound{
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "retry_total",
			Help: "Retry decisions on failed or retryable attempts, by result: attempted, budget_exhausted, " +
				"not_retryable, limit_reached."}, []string{"dst_namespace", "dst_service", "route", "result"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "circuit_breaker_rejected_total",
			Help: "Requests (503) and connections (closed) refused by a service's circuit-breaking limits, by the " +
				"limit: maxPendingRequests, maxRequests (the wait for a slot expired) or maxConnections."},
			[]string{"dst_namespace", "dst_service", "limit"}),
		descs: []*prometheus.Desc{
			descEjected:    d("failure_accrual_ejected_endpoints", "Endpoints of the service out of rotation (ejected or being probed)."),
			descEjections:  d("failure_accrual_ejections_total", "Endpoints ejected after consecutive failures or a failed probe."),
			descProbes:     d("failure_accrual_probes_total", "Probe requests sent to ejected endpoints whose backoff expired."),
			descRecoveries: d("failure_accrual_recoveries_total", "Ejected endpoints returned to rotation by a successful probe."),
			descPanic:      d("failure_accrual_panic_picks_total", "Picks made among all endpoints of a backend because all were ejected (panic mode)."),
			descBudget:     d("retry_budget_balance", "Retries the service's retry budget allows now."),
			descInFlight:   d("circuit_breaker_requests_in_flight", "HTTP requests to the service in flight (holding a slot)."),
			descWaiting:    d("circuit_breaker_requests_waiting", "HTTP requests waiting for a slot (maxRequests reached)."),
			descConns:      d("circuit_breaker_connections", "Opaque TCP connections to the service open."),
		},
	}
}

// Describe implements prometheus.Collector for the scrape-time figures.
func (o *outbound) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range o.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the source once per scrape.
func (o *outbound) Collect(ch chan<- prometheus.Metric) {
	o.mu.Lock()
	src := o.source
	o.mu.Unlock()
	if src == nil {
		return
	}
	for _, s := range src() {
		v := []string{s.Namespace, s.Service}
		emit := func(i int, t prometheus.ValueType, x float64) {
			ch <- prometheus.MustNewConstMetric(o.descs[i], t, x, v...)
		}
		emit(descEjected, prometheus.GaugeValue, float64(s.EjectedEndpoints))
		emit(descEjections, prometheus.CounterValue, float64(s.Ejections))
		emit(descProbes, prometheus.CounterValue, float64(s.Probes))
		emit(descRecoveries, prometheus.CounterValue, float64(s.Recoveries))
		emit(descPanic, prometheus.CounterValue, float64(s.PanicPicks))
		emit(descBudget, prometheus.GaugeValue, s.RetryBudget)
		emit(descInFlight, prometheus.GaugeValue, float64(s.RequestsInFlight))
		emit(descWaiting, prometheus.GaugeValue, float64(s.RequestsWaiting))
		emit(descConns, prometheus.GaugeValue, float64(s.Connections))
	}
}

// SetOutboundSource makes /metrics report, per outbound service, the figures source returns (one entry per service;
// the caller sums the ports of a service). Call it once, when the proxy starts.
func (m *Metrics) SetOutboundSource(source func() []ServiceStats) {
	m.out.mu.Lock()
	m.out.source = source
	m.out.mu.Unlock()
}

// RetryCounter returns the retry_total counter of a service's route for one result (see package retry's Result
// constants). Call it when compiling a snapshot, not per request.
func (m *Metrics) RetryCounter(namespace, service, route, result string) prometheus.Counter {
	return m.out.retries.WithLabelValues(namespace, service, route, result)
}

// Rejected returns the circuit_breaker_rejected_total counter of a service for one limit. Call it when compiling a
// snapshot, not per request.
func (m *Metrics) Rejected(namespace, service, limit string) prometheus.Counter {
	return m.out.rejected.WithLabelValues(namespace, service, limit)
}
