package node

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/trellis-mesh/trellis/proxy/balance"
	"github.com/trellis-mesh/trellis/proxy/mtls"
	"github.com/trellis-mesh/trellis/proxy/node/netns"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

// appConnector opens a pod proxy's connections without mesh TLS: to a loopback address (the application, for
// inbound traffic) from a socket created in the pod's namespace, to anything else from the node proxy's own.
type appConnector struct {
	ns    *netns.Handle
	store *snapshot.Store
}

var _ mtls.Connector = appConnector{}

func (c appConnector) timeout() time.Duration {
	if s := c.store.Load(); s != nil {
		return s.ConnectTimeout
	}
	return time.Second
}

// Connect dials ep.
func (c appConnector) Connect(ctx context.Context, ep *balance.Endpoint) (net.Conn, error) {
	if ep.Addr.Addr().IsLoopback() {
		return c.ns.Dial(ctx, ep.Addr.String(), c.timeout())
	}
	return mtls.Plain{Timeout: c.timeout()}.Connect(ctx, ep)
}

// meshConnector is appConnector with mesh TLS, under the pod's identity, to endpoints that have an identity.
type meshConnector struct {
	appConnector
	mesh *mtls.Mesh
}

var (
	_ mtls.Connector    = meshConnector{}
	_ mtls.TLSConnector = meshConnector{}
)

// Connect dials ep: the application inside the pod's namespace, meshed endpoints over mesh TLS, others plain.
func (c meshConnector) Connect(ctx context.Context, ep *balance.Endpoint) (net.Conn, error) {
	if ep.Addr.Addr().IsLoopback() {
		return c.appConnector.Connect(ctx, ep)
	}
	return c.mesh.Connect(ctx, ep)
}

// ConnectTLS dials ep over mesh TLS negotiating protocol.
func (c meshConnector) ConnectTLS(ctx context.Context, ep *balance.Endpoint, protocol string) (*tls.Conn, error) {
	return c.mesh.ConnectTLS(ctx, ep, protocol)
}
