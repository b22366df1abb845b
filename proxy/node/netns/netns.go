// Package netns works inside Linux network namespaces from a process that stays in its own: a socket belongs to the
// namespace of the thread that created it, for its whole life, so the node proxy enters a pod's namespace on one
// locked OS thread just long enough to create a listening or connecting socket, and returns the thread to its own
// namespace. Accepting, reading and writing then happen on any thread. Scanner finds the namespace of a pod IP
// among the files a container runtime mounts under /var/run/netns.
package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
)

// DefaultDir is where containerd (and CNI's netns helpers) mount the network namespaces of pod sandboxes.
const DefaultDir = "/var/run/netns"

// ErrNotFound is returned by Scanner.Find when no namespace holds the address.
var ErrNotFound = errors.New("no network namespace holds the address")

// FileID identifies a namespace file by device and inode: a namespace recreated under the same name has another.
type FileID struct {
	Dev, Ino uint64
}

// Scanner finds the network namespace that holds an address by entering each namespace file in Dir and listing its
// interface addresses. What a file holds is remembered by its FileID, so a namespace is entered once, however often
// it is searched.
type Scanner struct {
	// Dir holds the namespace files. Default DefaultDir.
	Dir string
	// Addrs lists the addresses of the namespace mounted at path. Default: enter it and list its interfaces
	// (Linux only).
	Addrs func(path string) ([]netip.Addr, error)
	// Stat returns the FileID of path. Default: stat(2).
	Stat func(path string) (FileID, error)

	mu    sync.Mutex
	known map[string]scanned // by file name
}

type scanned struct {
	id    FileID
	addrs []netip.Addr
}

// Find returns the path of the namespace file in Dir whose interfaces carry ip (loopback addresses never match).
// When several do (an address reused by a namespace that is being torn down), it fails rather than guess.
func (s *Scanner) Find(ip netip.Addr) (string, error) {
	dir, addrsOf, stat := s.Dir, s.Addrs, s.Stat
	if dir == "" {
		dir = DefaultDir
	}
	if addrsOf == nil {
		addrsOf = Addrs
	}
	if stat == nil {
		stat = StatID
	}
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsLoopback() || ip.IsUnspecified() {
		return "", fmt.Errorf("%v is not a pod address", ip)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("listing network namespaces: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.known == nil {
		s.known = map[string]scanned{}
	}
	present := map[string]bool{}
	var matches []string
	var failures []error
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		name := e.Name()
		path := filepath.Join(dir, name)
		id, err := stat(path)
		if err != nil {
			continue // removed meanwhile
		}
		present[name] = true
		k, ok := s.known[name]
		if !ok || k.id != id {
			addrs, err := addrsOf(path)
			if err != nil {
				// A namespace file that cannot be entered (being removed, or not a namespace) is retried next time.
				failures = append(failures, fmt.Errorf("%s: %w", path, err))
				delete(s.known, name)
				continue
			}
			k = scanned{id: id, addrs: addrs}
			s.known[name] = k
		}
		if slices.Contains(k.addrs, ip) {
			matches = append(matches, path)
		}
	}
	for name := range s.known {
		if !present[name] {
			delete(s.known, name)
		}
	}
	sort.Strings(matches)
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		if len(failures) > 0 {
			return "", fmt.Errorf("%w: %v (%d namespace file(s) could not be read: %w)", ErrNotFound, ip, len(failures),
				errors.Join(failures...))
		}
		return "", fmt.Errorf("%w: %v in %s", ErrNotFound, ip, dir)
	default:
		return "", fmt.Errorf("%v is held by %d network namespaces (%v); waiting until one is gone", ip, len(matches), matches)
	}
}

// Forget drops what the scanner remembers of path, so that the next Find enters it again.
func (s *Scanner) Forget(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.known, filepath.Base(path))
}
