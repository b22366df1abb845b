package redirect

import (
	"errors"
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Nftables is the default Backend: it writes the table inet trellis over nftables netlink, in one atomic batch.
type Nftables struct {
	// NetNS is the path of the network namespace to act on (e.g. /var/run/netns/pod); empty means the caller's own.
	NetNS string
}

var _ Backend = (*Nftables)(nil)

// hookNums maps hooks to netfilter's numbers.
var hookNums = map[Hook]nftables.ChainHook{
	HookOutput:     unix.NF_INET_LOCAL_OUT,
	HookPrerouting: unix.NF_INET_PRE_ROUTING,
}

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
}

// conn opens a connection to the namespace; close releases the namespace handle once the work is done.
func (n *Nftables) conn() (c *nftables.Conn, closeNS func(), err error) {
	if n.NetNS == "" {
		c, err = nftables.New()
		return c, func() {}, err
	}
	f, err := os.Open(n.NetNS)
	if err != nil {
		return nil, nil, fmt.Errorf("opening network namespace: %w", err)
	}
	c, err = nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return c, func() { f.Close() }, nil
}

// Install replaces the table in one netlink batch: add it (so the delete cannot fail), delete it with everything in
// it, then add it again with the chains and rules of rs. The kernel applies the batch all or nothing.
func (n *Nftables) Install(rs Ruleset) error {
	c, closeNS, err := n.conn()
	if err != nil {
		return kernelError("installing", err, nil)
	}
	defer closeNS()
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	for _, ch := range rs.Chains {
		if err := addChain(c, t, ch); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return kernelError("installing", err, probe(c))
	}
	return nil
}

func addChain(c *nftables.Conn, t *nftables.Table, ch Chain) error {
	hook, ok := hookNums[ch.Hook]
	if !ok {
		return fmt.Errorf("chain %s: unknown hook %q", ch.Name, ch.Hook)
	}
	policy := nftables.ChainPolicyAccept
	nc := c.AddChain(&nftables.Chain{
		Name: ch.Name, Table: t, Type: nftables.ChainTypeNAT, Policy: &policy,
		Hooknum: nftables.ChainHookRef(hook), Priority: nftables.ChainPriorityRef(nftables.ChainPriority(ch.Priority)),
	})
	for _, r := range ch.Rules {
		es, err := exprs(r)
		if err != nil {
			return fmt.Errorf("chain %s: %w", ch.Name, err)
		}
		nr := &nftables.Rule{Table: t, Chain: nc, Exprs: es}
		if r.Comment != "" {
			nr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
		}
		c.AddRule(nr)
	}
	return nil
}

// Remove deletes the table; adding it first in the same batch makes deleting an absent table succeed.
func (n *Nftables) Remove() error {
	c, closeNS, err := n.conn()
	if err != nil {
		return kernelError("removing", err, nil)
	}
	defer closeNS()
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return kernelError("removing", err, probe(c))
	}
	return nil
}

// Dump lists the installed table in nft syntax, decoded from what the kernel holds.
func (n *Nftables) Dump() (string, error) {
	rs, err := n.List()
	if err != nil {
		return "", err
	}
	return rs.String(), nil
}

// Render returns rs in nft syntax.
func (n *Nftables) Render(rs Ruleset) string { return rs.String() }

// List reads the installed table back from the kernel. It returns ErrNotInstalled when there is no table, and an
// error when the table holds chains or rules proxy-init does not write (it was changed by other means).
func (n *Nftables) List() (Ruleset, error) {
	c, closeNS, err := n.conn()
	if err != nil {
		return Ruleset{}, kernelError("listing", err, nil)
	}
	defer closeNS()
	t := table()
	if _, err := c.ListTableOfFamily(t.Name, t.Family); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Ruleset{}, ErrNotInstalled
		}
		return Ruleset{}, kernelError("listing", err, nil)
	}
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return Ruleset{}, kernelError("listing chains", err, nil)
	}
	var rs Ruleset
	for _, nc := range chains {
		if nc.Table == nil || nc.Table.Name != t.Name {
			continue
		}
		ch, err := listChain(c, t, nc)
		if err != nil {
			return Ruleset{}, err
		}
		rs.Chains = append(rs.Chains, ch)
	}
	return rs, nil
}

func listChain(c *nftables.Conn, t *nftables.Table, nc *nftables.Chain) (Chain, error) {
	ch := Chain{Name: nc.Name}
	if nc.Type != nftables.ChainTypeNAT || nc.Hooknum == nil || nc.Priority == nil || nc.Policy == nil ||
		*nc.Policy != nftables.ChainPolicyAccept {
		return Chain{}, fmt.Errorf("chain %s is not a nat base chain with policy accept: %w", nc.Name, errForeign)
	}
	for h, num := range hookNums {
		if num == *nc.Hooknum {
			ch.Hook = h
		}
	}
	if ch.Hook == "" {
		return Chain{}, fmt.Errorf("chain %s has hook %d: %w", nc.Name, *nc.Hooknum, errForeign)
	}
	ch.Priority = int32(*nc.Priority)
	rules, err := c.GetRules(t, nc)
	if err != nil {
		return Chain{}, kernelError("listing rules", err, nil)
	}
	for i, nr := range rules {
		r, err := decode(nr.Exprs)
		if err != nil {
			return Chain{}, fmt.Errorf("chain %s, rule %d (handle %d): %w", nc.Name, i+1, nr.Handle, err)
		}
		r.Comment, _ = userdata.GetString(nr.UserData, userdata.TypeComment)
		ch.Rules = append(ch.Rules, r)
	}
	return ch, nil
}

// kernelError turns netlink failures into messages that say what to do. probe, when not nil, asks the kernel
// something harmless: it tells a kernel without nftables from one that refused a batch for another reason.
func kernelError(op string, err error, probe func() error) error {
	switch {
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%s the redirect rules: permission denied (%w); proxy-init needs CAP_NET_ADMIN in the "+
			"pod's network namespace", op, err)
	case unavailable(err, probe):
		return fmt.Errorf("%w: %w; %s the redirect rules needs the nf_tables, nft_chain_nat and nft_redir kernel "+
			"modules (Linux 5.2 or later for inet nat chains), or run proxy-init with --mode=iptables",
			ErrUnavailable, err, op)
	}
	return fmt.Errorf("%s the redirect rules: %w", op, err)
}

// unavailable reports whether err means the kernel lacks nftables: no nfnetlink (EPROTONOSUPPORT), a missing chain
// type or expression module (ENOENT: proxy-init's batches never name objects that may be absent), or no nf_tables
// subsystem or inet family (EOPNOTSUPP, EAFNOSUPPORT) when the probe fails the same way.
func unavailable(err error, probe func() error) bool {
	switch {
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.ENOENT):
		return true
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EAFNOSUPPORT):
		if probe == nil {
			return true
		}
		perr := probe()
		return errors.Is(perr, unix.EPROTONOSUPPORT) || errors.Is(perr, unix.EOPNOTSUPP) || errors.Is(perr, unix.EAFNOSUPPORT)
	}
	return false
}

// probe lists the inet tables, which works on any kernel with nftables.
func probe(c *nftables.Conn) func() error {
	return func() error {
		_, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		return err
	}
}
