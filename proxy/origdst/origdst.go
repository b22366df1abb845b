// Package origdst recovers the destination a client dialled before an iptables REDIRECT rule sent its connection to
// the proxy (SO_ORIGINAL_DST for IPv4, IP6T_SO_ORIGINAL_DST for IPv6).
package origdst

import (
	"errors"
	"net"
	"net/netip"
)

// ErrUnsupported is returned on platforms without SO_ORIGINAL_DST.
var ErrUnsupported = errors.New("SO_ORIGINAL_DST is not supported on this platform")

// Get returns the original destination of a redirected TCP connection. For a connection that was not redirected it
// returns an error (ENOENT from the kernel) or, where conntrack tracks the connection anyway, its local address.
func Get(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, errors.New("original destination needs a *net.TCPConn")
	}
	return get(tc)
}
