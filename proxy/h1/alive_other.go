//go:build !linux

package h1

import "net"

func alive(net.Conn) bool { return true }

// peerClosed cannot tell without MSG_PEEK: it reports false.
func peerClosed(net.Conn) bool { return false }
