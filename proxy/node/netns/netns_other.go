//go:build !linux

package netns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// errUnsupported is returned on platforms without network namespaces.
var errUnsupported = errors.New("network namespaces are a Linux feature")

// Handle is an open network namespace (Linux only).
type Handle struct{}

// Open fails: network namespaces are a Linux feature.
func Open(string) (*Handle, error) { return nil, errUnsupported }

// Path returns "".
func (h *Handle) Path() string { return "" }

// ID returns the zero FileID.
func (h *Handle) ID() FileID { return FileID{} }

// Current returns false.
func (h *Handle) Current() bool { return false }

// Close does nothing.
func (h *Handle) Close() error { return nil }

// Do fails.
func (h *Handle) Do(func() error) error { return errUnsupported }

// Listen fails.
func (h *Handle) Listen(context.Context, string) (net.Listener, error) { return nil, errUnsupported }

// Dial fails.
func (h *Handle) Dial(context.Context, string, time.Duration) (net.Conn, error) {
	return nil, errUnsupported
}

// Addrs fails.
func (h *Handle) Addrs() ([]netip.Addr, error) { return nil, errUnsupported }

// Addrs fails.
func Addrs(string) ([]netip.Addr, error) { return nil, errUnsupported }

// StatID fails.
func StatID(string) (FileID, error) { return FileID{}, errUnsupported }
