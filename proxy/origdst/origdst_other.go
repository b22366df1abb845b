//go:build !linux

package origdst

import (
	"net"
	"net/netip"
)

func get(*net.TCPConn) (netip.AddrPort, error) { return netip.AddrPort{}, ErrUnsupported }
