package redirect

import (
	"errors"
	"fmt"
)

// Mode names a Backend.
type Mode string

// The backends proxy-init can use.
const (
	// ModeNftables programs the kernel through nftables netlink messages (no nft binary needed). The default.
	ModeNftables Mode = "nftables"
	// ModeIPTables runs iptables-restore and ip6tables-restore, for nodes whose kernel lacks nftables.
	ModeIPTables Mode = "iptables"
)

// Backend writes a Ruleset into a network namespace's packet filter.
type Backend interface {
	// Install replaces whatever proxy-init installed before with rs, atomically: a failed Install leaves the
	// previous rules in place. Running it twice with the same Ruleset leaves one copy of the rules.
	Install(rs Ruleset) error
	// Remove deletes everything proxy-init installed; removing nothing is not an error.
	Remove() error
	// Dump describes the installed rules for people (logs, tests); ErrNotInstalled if there are none.
	Dump() (string, error)
	// Render shows, without touching the kernel, what Install would write for rs.
	Render(rs Ruleset) string
}

var (
	// ErrNotInstalled is returned by Dump when no Trellis rules are installed.
	ErrNotInstalled = errors.New("no Trellis redirect rules are installed")
	// ErrUnavailable wraps failures caused by a kernel without the needed nftables support.
	ErrUnavailable = errors.New("nftables is not available in this kernel")
)

// NewBackend returns the backend for mode, acting on the network namespace mounted at netns (for example
// /var/run/netns/pod), or on the caller's own namespace when netns is empty.
func NewBackend(mode Mode, netns string) (Backend, error) {
	switch mode {
	case ModeNftables, "":
		return &Nftables{NetNS: netns}, nil
	case ModeIPTables:
		return &IPTables{NetNS: netns}, nil
	}
	return nil, fmt.Errorf("unknown mode %q: use %q or %q", mode, ModeNftables, ModeIPTables)
}
