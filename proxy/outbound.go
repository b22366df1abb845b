package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/h1"
	"github.com/trellis-mesh/trellis/proxy/h2"
	"github.com/trellis-mesh/trellis/proxy/retry"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
	"github.com/trellis-mesh/trellis/proxy/tcp"
)

// retryPicks is how many picks a connect retry makes to find another endpoint than the one that refused.
const retryPicks = 3

// outboundRouter routes the requests of one outbound connection.
type outboundRouter struct {
	p        *Proxy
	dst      netip.AddrPort
	fallback *balance.Endpoint
}

// outboundTarget is where one outbound request goes: a route, one of its backends and a first endpoint picked from
// it, or a local answer (status).
type outboundTarget struct {
	svc    *snapshot.Service
	rt     *snapshot.Route
	be     *snapshot.Backend
	ep     *balance.Endpoint
	done   func(balance.DoneInfo)
	status int
	reason string
}

func (r *outboundRouter) route(req snapshot.Request) (t outboundTarget) {
	t.svc = r.p.o.Store.Load().Service(r.dst)
	if t.svc == nil {
		// The service left the configuration after this connection was detected: keep going where the client was.
		t.ep = r.fallback
		return t
	}
	t.rt = t.svc.Route(req)
	if t.rt.DirectStatus != 0 {
		t.status, t.reason = t.rt.DirectStatus, t.rt.DirectReason
		return t
	}
	t.be = t.rt.Backend()
	switch {
	case t.be == nil:
		t.status, t.reason = 503, "no backend"
		return t
	case t.be.Unresolved != "":
		t.status, t.reason = 500, t.be.Unresolved
		return t
	}
	ep, done, err := t.be.Picker.Pick()
	if err != nil {
		done(balance.DoneInfo{Err: err})
		t.status, t.reason = 503, "no endpoints"
		return t
	}
	t.ep, t.done = ep, done
	return t
}

// Route implements h1.Router.
func (r *outboundRouter) Route(req *h1.Request) h1.Target {
	o := r.route(req)
	t := h1.Target{Endpoint: o.ep, Done: o.done, Status: o.status, Reason: o.reason, Metrics: r.p.unknownR}
	if o.rt != nil {
		t.Timeout, t.Metrics = o.rt.Timeout, o.rt.Metrics
		if o.ep != nil {
			t.Metrics = o.rt.MetricsFor(o.ep.Identity)
			t.Retry, t.Picker, t.Breaker = o.rt.Retry, o.be.Picker, o.svc.Breaker
			t.RequestHeaders, t.ResponseHeaders = o.rt.RequestHeaders, o.rt.ResponseHeaders
		}
	}
	return t
}

// h2Outbound routes HTTP/2 streams of one outbound connection.
type h2Outbound struct{ *outboundRouter }

// Route implements h2.Router.
func (r h2Outbound) Route(req *http.Request) h2.Target {
	o := r.route(h2Request{req})
	t := h2.Target{Endpoint: o.ep, Done: o.done, Status: o.status, Reason: o.reason, Metrics: r.p.unknownR}
	if o.rt != nil {
		t.Timeout, t.Metrics = o.rt.Timeout, o.rt.Metrics
		if o.ep != nil {
			t.Metrics = o.rt.MetricsFor(o.ep.Identity)
			t.Retry, t.Picker, t.Breaker = o.rt.Retry, o.be.Picker, o.svc.Breaker
			t.RequestHeaders, t.ResponseHeaders = o.rt.RequestHeaders, o.rt.ResponseHeaders
		}
	}
	return t
}

// forwardService relays an opaque connection to an endpoint of the service's default route, picked once for the
// connection. A connection beyond the service's maxConnections is closed; a failed connect is retried on another
// pick within the retry budget (nothing was sent). The picker learns only the connect outcome and time; its done is
// called when the connection ends, so that requests in flight count open connections.
func (p *Proxy) forwardService(c *countedConn, br *bufio.Reader, svc *snapshot.Service, snap *snapshot.Snapshot) error {
	if !svc.Breaker.AcquireConn() {
		c.Close()
		return nil
	}
	defer svc.Breaker.ReleaseConn()
	be := svc.Default.Backend()
	if be == nil || be.Unresolved != "" {
		c.Close()
		return nil
	}
	plan := svc.Default.Retry
	plan.Budget.Deposit()
	var failed netip.AddrPort
	var failedDone func(balance.DoneInfo) // reported after the next pick, which then leans away from the endpoint
	var failure balance.DoneInfo
	for n := 0; ; n++ {
		ep, done, err := balance.PickExcept(be.Picker, failed, retryPicks)
		if failedDone != nil {
			failedDone(failure)
		}
		if err != nil {
			done(balance.DoneInfo{Err: err})
			c.Close()
			return err
		}
		start := time.Now()
		up, err := p.o.Connector.Connect(context.Background(), ep)
		connected := time.Since(start)
		if err != nil {
			p.o.Log.Debug("TCP connect failed", "endpoint", ep.HostPort, "identity", ep.Identity, "error", err)
			if delay, again := plan.Decide("", n, retry.Outcome{ConnectFailure: true}, true,
				retry.NoDeadline); again {
				failed, failedDone, failure = ep.Addr, done, balance.DoneInfo{Err: err, Latency: connected}
				time.Sleep(delay)
				continue
			}
			done(balance.DoneInfo{Err: err, Latency: connected})
			c.setClass(svc.TCPFor(ep.Identity))
			c.Close()
			return err
		}
		c.setClass(svc.TCPFor(ep.Identity))
		err = relayTCP(c, up, br, snap)
		done(balance.DoneInfo{Latency: connected})
		return err
	}
}

// SyscallConn exposes the client connection's descriptor, so that the HTTP/1 relay can tell whether the client is
// still there.
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

// relayTCP relays bytes both ways between c and up until both ends close; br, when set, holds bytes already read
// from c.
func relayTCP(c, up net.Conn, br *bufio.Reader, snap *snapshot.Snapshot) error {
	o := tcp.Options{IdleTimeout: snap.TCPIdleTimeout}
	if br != nil {
		o.ClientReader = br
	}
	_, _, err := tcp.Forward(c, up, o)
	if errors.Is(err, tcp.ErrIdle) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
