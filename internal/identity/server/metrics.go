package server

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// Metric names; docs/identity.md describes them.
const (
	// MetricCertifyTotal counts certify requests by result (issued, refused, failed) and reason.
	MetricCertifyTotal = "identity_certify_total"
	// MetricIssuerExpirationTimestamp is the NotAfter of the issuer in use, in seconds since the epoch.
	MetricIssuerExpirationTimestamp = "identity_issuer_expiration_timestamp_seconds"
	// MetricSecretLoadTotal counts versions of the watched Secrets by secret (issuer, serving) and result (loaded,
	// invalid, deleted).
	MetricSecretLoadTotal = "identity_secret_load_total"
	// MetricServingExpirationTimestamp is the NotAfter of the serving certificate, in seconds since the epoch.
	MetricServingExpirationTimestamp = "identity_serving_cert_expiration_timestamp_seconds"
)

type metrics struct {
	certify       *prometheus.CounterVec
	issuerExpiry  prometheus.Gauge
	servingExpiry prometheus.Gauge
	secretLoad    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		certify: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricCertifyTotal,
			Help: "Certify requests by result (issued, refused, failed) and reason.",
		}, []string{"result", "reason"}),
		issuerExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricIssuerExpirationTimestamp,
			Help: "NotAfter of the loaded identity issuer certificate, in seconds since the epoch.",
		}),
		servingExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricServingExpirationTimestamp,
			Help: "NotAfter of the loaded serving certificate of the identity service, in seconds since the epoch.",
		}),
		secretLoad: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricSecretLoadTotal,
			Help: "Loads of the issuer and serving Secrets by secret (issuer, serving) and result (loaded, invalid, deleted).",
		}, []string{"secret", "result"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.certify, err = register(reg, m.certify); err != nil {
		return nil, err
	}
	if m.issuerExpiry, err = register(reg, m.issuerExpiry); err != nil {
		return nil, err
	}
	if m.servingExpiry, err = register(reg, m.servingExpiry); err != nil {
		return nil, err
	}
	if m.secretLoad, err = register(reg, m.secretLoad); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered under the same description (several servers in
// one process share the series).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

func (m *metrics) observe(reason identity.Reason) {
	m.certify.WithLabelValues(reason.Result(), string(reason)).Inc()
}
