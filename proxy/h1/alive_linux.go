//go:build linux

package h1

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// alive reports whether an idle connection is still open and has no unexpected bytes waiting, with one non-blocking
// MSG_PEEK receive.
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = true
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		ok = errno == unix.EAGAIN || errno == unix.EINTR
		_ = n
		return true
	})
	return err == nil && ok
}

// peerClosed reports whether the peer of c closed or reset the connection: a non-blocking MSG_PEEK receive sees the
// end of the stream or ECONNRESET (pending data, or nothing yet, is not a close).
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		closed = (errno == 0 && n == 0) || errno == unix.ECONNRESET
		return true
	})
	return err == nil && closed
}
