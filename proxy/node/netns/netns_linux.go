//go:build linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// home is the process's own network namespace, which every thread returns to after Do.
var home = sync.OnceValues(func() (*os.File, error) {
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("opening the process's network namespace: %w", err)
	}
	return f, nil
})

// Handle is an open network namespace. It keeps the namespace alive while open, even after its file is removed.
type Handle struct {
	f    *os.File
	path string
	id   FileID
}

// Open opens the namespace mounted at path (a file under /var/run/netns, or /proc/<pid>/ns/net).
func Open(path string) (*Handle, error) {
	if _, err := home(); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil || (fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC) {
		f.Close()
		return nil, fmt.Errorf("%s is not a network namespace file", path)
	}
	return &Handle{f: f, path: path, id: FileID{Dev: uint64(st.Dev), Ino: st.Ino}}, nil //nolint:unconvert // Dev is uint32 on some platforms
}

// Path returns the file the namespace was opened from.
func (h *Handle) Path() string { return h.path }

// ID returns the namespace file's identity when it was opened.
func (h *Handle) ID() FileID { return h.id }

// Current reports whether the path still names the namespace h holds (a pod sandbox that was recreated mounts a new
// namespace, possibly under another name).
func (h *Handle) Current() bool {
	id, err := StatID(h.path)
	return err == nil && id == h.id
}

// Close releases the namespace; sockets created in it keep it alive until they close.
func (h *Handle) Close() error { return h.f.Close() }

// Do runs fn on an OS thread that has joined the namespace, then returns the thread to the process's namespace.
// Sockets fn creates belong to h's namespace. fn must not start goroutines that expect to run in the namespace. If
// the thread cannot return, it stays locked and the runtime discards it when fn's goroutine ends.
func (h *Handle) Do(fn func() error) error {
	self, err := home()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(h.f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering network namespace %s: %w", h.path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("returning from network namespace %s: %w", h.path, err))
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a TCP listener on addr inside the namespace.
func (h *Handle) Listen(ctx context.Context, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
		return err
	})
	return ln, err
}

// Dial connects to addr (an IP literal and port) from a socket created inside the namespace, within timeout (0:
// only ctx bounds it).
func (h *Handle) Dial(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		c, err = (&net.Dialer{Timeout: timeout}).DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// Addrs lists the addresses of the namespace's interfaces.
func (h *Handle) Addrs() ([]netip.Addr, error) {
	var out []netip.Addr
	err := h.Do(func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					out = append(out, ip.Unmap())
				}
			}
		}
		return nil
	})
	return out, err
}

// Addrs lists the interface addresses of the namespace mounted at path.
func Addrs(path string) ([]netip.Addr, error) {
	h, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return h.Addrs()
}

// StatID returns the FileID of path.
func StatID(path string) (FileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return FileID{}, err
	}
	return FileID{Dev: uint64(st.Dev), Ino: st.Ino}, nil //nolint:unconvert // Dev is uint32 on some platforms
}
