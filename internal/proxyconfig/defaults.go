package proxyconfig

import "time"

// Default values, applied by SetDefaults. docs/proxy-config.md lists the same values.
const (
	DefaultClusterDomain       = "cluster.local"
	DefaultDetectTimeout       = time.Second
	DefaultConnectTimeout      = time.Second
	DefaultRequestTimeout      = time.Duration(0)
	DefaultTCPIdleTimeout      = time.Hour
	DefaultHTTPIdleTimeout     = 90 * time.Second
	DefaultRetryRatio          = 0.2
	DefaultMinRetriesPerSecond = int32(10)
	DefaultRetryTTL            = 10 * time.Second
	DefaultConsecutiveFailures = int32(7)
	DefaultMinBackoff          = time.Second
	DefaultMaxBackoff          = time.Minute
	DefaultLoadBalancer        = LoadBalancerEWMA
	DefaultWeight              = int32(1)
	DefaultRetryAttempts       = int32(1)
	DefaultRetryBackoffBase    = 25 * time.Millisecond
	DefaultRetryBackoffMax     = 250 * time.Millisecond
	DefaultRetryMaxBodyBytes   = int32(64 << 10)
	DefaultPolicy              = PolicyAllUnauthenticated
)

// MaxRetryBodyBytes is the largest RetryPolicy.MaxBodyBytes accepted.
const MaxRetryBodyBytes = 1 << 20

// SetDefaults fills every unset field that has a default, in place. It is the only place defaults are applied; it is
// idempotent and leaves set fields alone.
func SetDefaults(c *Config) {
	if c.ClusterDomain == "" {
		c.ClusterDomain = DefaultClusterDomain
	}
	if c.Defaults == nil {
		c.Defaults = &Defaults{}
	}
	defaultDefaults(c.Defaults)
	if c.Inbound == nil {
		c.Inbound = &Inbound{}
	}
	if c.Inbound.DefaultPolicy == "" {
		c.Inbound.DefaultPolicy = DefaultPolicy
	}
	defaultInboundPorts(c.Inbound.Ports, c.Inbound.DefaultPolicy)
	for i := range c.Inbound.Workloads {
		w := &c.Inbound.Workloads[i]
		if w.DefaultPolicy == "" {
			w.DefaultPolicy = c.Inbound.DefaultPolicy
		}
		defaultInboundPorts(w.Ports, c.Inbound.DefaultPolicy)
		for j := range w.Routes {
			for k := range w.Routes[j].Matches {
				defaultMatch(&w.Routes[j].Matches[k])
			}
		}
	}
	for i := range c.Services {
		defaultService(&c.Services[i], c.Defaults.FailureAccrual)
	}
}

func defaultInboundPorts(ports []InboundPort, policy string) {
	for i := range ports {
		p := &ports[i]
		if p.DefaultPolicy == "" {
			p.DefaultPolicy = policy
		}
		for j := range p.Routes {
			for k := range p.Routes[j].Matches {
				defaultMatch(&p.Routes[j].Matches[k])
			}
		}
	}
}

func defaultDefaults(d *Defaults) {
	setDuration(&d.DetectTimeout, DefaultDetectTimeout)
	setDuration(&d.ConnectTimeout, DefaultConnectTimeout)
	setDuration(&d.RequestTimeout, DefaultRequestTimeout)
	setDuration(&d.TCPIdleTimeout, DefaultTCPIdleTimeout)
	setDuration(&d.HTTPIdleTimeout, DefaultHTTPIdleTimeout)
	if d.RetryBudget == nil {
		d.RetryBudget = &RetryBudget{}
	}
	if d.RetryBudget.Ratio == nil {
		r := DefaultRetryRatio
		d.RetryBudget.Ratio = &r
	}
	setInt32(&d.RetryBudget.MinRetriesPerSecond, DefaultMinRetriesPerSecond)
	setDuration(&d.RetryBudget.TTL, DefaultRetryTTL)
	if d.FailureAccrual == nil {
		d.FailureAccrual = &FailureAccrual{}
	}
	setInt32(&d.FailureAccrual.ConsecutiveFailures, DefaultConsecutiveFailures)
	setDuration(&d.FailureAccrual.MinBackoff, DefaultMinBackoff)
	setDuration(&d.FailureAccrual.MaxBackoff, DefaultMaxBackoff)
	if d.LoadBalancer == "" {
		d.LoadBalancer = DefaultLoadBalancer
	}
}

func defaultService(s *Service, accrual *FailureAccrual) {
	if f := s.FailureAccrual; f != nil && accrual != nil {
		if f.ConsecutiveFailures == nil && accrual.ConsecutiveFailures != nil {
			setInt32(&f.ConsecutiveFailures, *accrual.ConsecutiveFailures)
		}
		if f.MinBackoff == nil && accrual.MinBackoff != nil {
			setDuration(&f.MinBackoff, accrual.MinBackoff.Duration)
		}
		if f.MaxBackoff == nil && accrual.MaxBackoff != nil {
			setDuration(&f.MaxBackoff, accrual.MaxBackoff.Duration)
		}
	}
	for i := range s.Backends {
		b := &s.Backends[i]
		if b.Namespace == "" {
			b.Namespace = s.Namespace
		}
		setInt32(&b.Weight, DefaultWeight)
	}
	for i := range s.Routes {
		r := &s.Routes[i]
		for j := range r.Backends {
			setInt32(&r.Backends[j].Weight, DefaultWeight)
		}
		for j := range r.Matches {
			defaultMatch(&r.Matches[j])
		}
		if r.Retry != nil {
			setInt32(&r.Retry.Attempts, DefaultRetryAttempts)
			if len(r.Retry.RetryOn) == 0 {
				r.Retry.RetryOn = []string{"connect-failure"}
			}
			if r.Retry.Backoff == nil {
				r.Retry.Backoff = &RetryBackoff{}
			}
			setDuration(&r.Retry.Backoff.Base, DefaultRetryBackoffBase)
			setDuration(&r.Retry.Backoff.Max, DefaultRetryBackoffMax)
			setInt32(&r.Retry.MaxBodyBytes, DefaultRetryMaxBodyBytes)
		}
	}
}

func defaultMatch(m *Match) {
	if m.Path != nil && m.Path.Type == "" {
		m.Path.Type = MatchPathPrefix
	}
	for k := range m.Headers {
		if m.Headers[k].Type == "" {
			m.Headers[k].Type = MatchExact
		}
	}
}

func setDuration(p **Duration, v time.Duration) {
	if *p == nil {
		*p = D(v)
	}
}

func setInt32(p **int32, v int32) {
	if *p == nil {
		*p = &v
	}
}
