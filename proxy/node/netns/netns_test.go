package netns

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeNamespaces is a folder of namespace files whose addresses and identities the test decides.
type fakeNamespaces struct {
	dir     string
	addrs   map[string][]netip.Addr // by file name
	ids     map[string]FileID
	entered map[string]int
	broken  map[string]bool
}

func newFake(t *testing.T) *fakeNamespaces {
	return &fakeNamespaces{dir: t.TempDir(), addrs: map[string][]netip.Addr{}, ids: map[string]FileID{},
		entered: map[string]int{}, broken: map[string]bool{}}
}

func (f *fakeNamespaces) add(t *testing.T, name string, ino uint64, addrs ...string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, name), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.ids[name] = FileID{Dev: 4, Ino: ino}
	f.addrs[name] = nil
	for _, a := range addrs {
		f.addrs[name] = append(f.addrs[name], netip.MustParseAddr(a))
	}
}

func (f *fakeNamespaces) scanner() *Scanner {
	return &Scanner{
		Dir: f.dir,
		Addrs: func(path string) ([]netip.Addr, error) {
			name := filepath.Base(path)
			f.entered[name]++
			if f.broken[name] {
				return nil, errors.New("invalid argument")
			}
			return f.addrs[name], nil
		},
		Stat: func(path string) (FileID, error) {
			if _, err := os.Stat(path); err != nil {
				return FileID{}, err
			}
			return f.ids[filepath.Base(path)], nil
		},
	}
}

func TestScannerFind(t *testing.T) {
	f := newFake(t)
	f.add(t, "cni-1111", 11, "127.0.0.1", "10.244.0.5", "fd00:10:244::5")
	f.add(t, "cni-2222", 12, "127.0.0.1", "10.244.0.6")
	f.add(t, "trellis-node", 13, "10.200.0.10", "10.244.0.1")
	s := f.scanner()

	for _, tc := range []struct {
		ip, want, err string
	}{
		{"10.244.0.5", "cni-1111", ""},
		{"fd00:10:244::5", "cni-1111", ""},
		{"10.244.0.6", "cni-2222", ""},
		{"::ffff:10.244.0.6", "cni-2222", ""},
		{"10.244.0.9", "", "no network namespace holds the address: 10.244.0.9"},
		{"127.0.0.1", "", "is not a pod address"},
	} {
		got, err := s.Find(netip.MustParseAddr(tc.ip))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Find(%s) = %q, %v; want error %q", tc.ip, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != filepath.Join(f.dir, tc.want) {
			t.Errorf("Find(%s) = %q, %v; want %s", tc.ip, got, err, tc.want)
		}
	}
	for name, n := range f.entered {
		if n != 1 {
			t.Errorf("namespace %s entered %d times, want once: what it holds is remembered", name, n)
		}
	}

	// A sandbox recreated under the same name (new inode) is entered again; a removed one is forgotten.
	f.add(t, "cni-2222", 22, "10.244.0.7")
	if got, err := s.Find(netip.MustParseAddr("10.244.0.7")); err != nil || filepath.Base(got) != "cni-2222" {
		t.Fatalf("after the namespace was replaced: %q, %v", got, err)
	}
	if _, err := s.Find(netip.MustParseAddr("10.244.0.6")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the replaced namespace's old address: %v", err)
	}
	if err := os.Remove(filepath.Join(f.dir, "cni-1111")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Find(netip.MustParseAddr("10.244.0.5")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a removed namespace still matches: %v", err)
	}

	// Two namespaces with one address: no guess.
	f.add(t, "cni-3333", 33, "10.244.0.7")
	if _, err := s.Find(netip.MustParseAddr("10.244.0.7")); err == nil || !strings.Contains(err.Error(), "held by 2 network namespaces") {
		t.Fatalf("ambiguous address: %v", err)
	}

	// A file that cannot be entered is reported and tried again next time.
	f.add(t, "cni-4444", 44, "10.244.0.8")
	f.broken["cni-4444"] = true
	if _, err := s.Find(netip.MustParseAddr("10.244.0.8")); err == nil || !strings.Contains(err.Error(), "could not be read") {
		t.Fatalf("unreadable namespace: %v", err)
	}
	f.broken["cni-4444"] = false
	if got, err := s.Find(netip.MustParseAddr("10.244.0.8")); err != nil || filepath.Base(got) != "cni-4444" {
		t.Fatalf("after the namespace became readable: %q, %v", got, err)
	}
}
