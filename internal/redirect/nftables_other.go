//go:build !linux

package redirect

import "errors"

// Nftables is the default Backend; nftables exists only on Linux.
type Nftables struct {
	// NetNS is the path of the network namespace to act on; empty means the caller's own.
	NetNS string
}

var _ Backend = (*Nftables)(nil)

var errNotLinux = errors.New("the redirect rules need Linux")

// Install fails: nftables exists only on Linux.
func (n *Nftables) Install(Ruleset) error { return errNotLinux }

// Remove fails: nftables exists only on Linux.
func (n *Nftables) Remove() error { return errNotLinux }

// Dump fails: nftables exists only on Linux.
func (n *Nftables) Dump() (string, error) { return "", errNotLinux }

// Render returns rs in nft syntax.
func (n *Nftables) Render(rs Ruleset) string { return rs.String() }
