//go:build !linux

package h1

import "net"

func alive(net.Conn) bool { return true }
