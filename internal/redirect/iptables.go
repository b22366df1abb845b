package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Chains the iptables backend owns in the nat table of both families.
const (
	// IPTablesOutputChain holds the outbound rules; nat OUTPUT jumps to it for TCP.
	IPTablesOutputChain = "TRELLIS_OUTPUT"
	// IPTablesInboundChain holds the inbound rules; nat PREROUTING jumps to it for TCP.
	IPTablesInboundChain = "TRELLIS_INBOUND"
)

// iptablesTimeout bounds each iptables command.
const iptablesTimeout = 30 * time.Second

// IPTables is the fallback Backend for kernels without nftables: it feeds the same Ruleset to iptables-restore and
// ip6tables-restore (nft or legacy flavour, whichever the image's iptables is), one atomic restore per family, and
// leaves every chain it does not own alone.
type IPTables struct {
	// NetNS is the path of the network namespace to act on; when set, the commands run under nsenter --net=NetNS.
	// Empty means the caller's own namespace.
	NetNS string
}

var _ Backend = (*IPTables)(nil)

// ipFamily is one of iptables' two address families.
type ipFamily struct {
	save, restore string
	v6            bool
}

var ipFamilies = []ipFamily{
	{save: "iptables-save", restore: "iptables-restore"},
	{save: "ip6tables-save", restore: "ip6tables-restore", v6: true},
}

// iptablesChains maps each hook to the owned chain and the built-in chain that jumps to it.
var iptablesChains = map[Hook][2]string{
	HookOutput:     {IPTablesOutputChain, "OUTPUT"},
	HookPrerouting: {IPTablesInboundChain, "PREROUTING"},
}

// Install declares the owned chains (which flushes them), fills them and adds each jump once.
func (b *IPTables) Install(rs Ruleset) error {
	for _, f := range ipFamilies {
		saved, err := b.save(f)
		if err != nil {
			return err
		}
		input, err := iptablesRestoreInput(rs, f.v6, saved)
		if err != nil {
			return err
		}
		if err := b.restore(f, input); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes the jumps and the owned chains that exist.
func (b *IPTables) Remove() error {
	for _, f := range ipFamilies {
		saved, err := b.save(f)
		if err != nil {
			return err
		}
		if input := iptablesRemoveInput(saved); input != "" {
			if err := b.restore(f, input); err != nil {
				return err
			}
		}
	}
	return nil
}

// Dump returns the lines of iptables-save and ip6tables-save that mention the owned chains.
func (b *IPTables) Dump() (string, error) {
	var out strings.Builder
	found := false
	for _, f := range ipFamilies {
		saved, err := b.save(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&out, "# %s -t nat\n", f.save)
		for _, l := range strings.Split(saved, "\n") {
			if strings.Contains(l, "TRELLIS_") {
				found = true
				out.WriteString(l + "\n")
			}
		}
	}
	if !found {
		return "", ErrNotInstalled
	}
	return out.String(), nil
}

// Render returns the input Install would give each restore command on a namespace without Trellis rules.
func (b *IPTables) Render(rs Ruleset) string {
	var out strings.Builder
	for _, f := range ipFamilies {
		input, err := iptablesRestoreInput(rs, f.v6, "")
		if err != nil {
			return fmt.Sprintf("# %s: %v\n", f.restore, err)
		}
		fmt.Fprintf(&out, "# %s --noflush\n%s", f.restore, input)
	}
	return out.String()
}

// iptablesRestoreInput writes rs for one family as iptables-restore --noflush input. saved is the family's current
// iptables-save output; jumps already in it are not added again.
func iptablesRestoreInput(rs Ruleset, v6 bool, saved string) (string, error) {
	var decl, rules, jumps strings.Builder
	for _, ch := range rs.Chains {
		names, ok := iptablesChains[ch.Hook]
		if !ok {
			return "", fmt.Errorf("chain %s: unknown hook %q", ch.Name, ch.Hook)
		}
		fmt.Fprintf(&decl, ":%s - [0:0]\n", names[0])
		for _, r := range ch.Rules {
			args, ok, err := iptablesRule(r, v6)
			if err != nil {
				return "", fmt.Errorf("chain %s: %w", ch.Name, err)
			}
			if ok {
				fmt.Fprintf(&rules, "-A %s %s\n", names[0], args)
			}
		}
		if jump := iptablesJump(names); !hasLine(saved, jump) {
			jumps.WriteString(jump + "\n")
		}
	}
	return "*nat\n" + decl.String() + rules.String() + jumps.String() + "COMMIT\n", nil
}

// iptablesRemoveInput deletes the jumps and owned chains found in saved; empty when there is nothing to delete.
func iptablesRemoveInput(saved string) string {
	var del, drop strings.Builder
	for _, h := range []Hook{HookOutput, HookPrerouting} {
		names := iptablesChains[h]
		if jump := iptablesJump(names); hasLine(saved, jump) {
			del.WriteString("-D" + strings.TrimPrefix(jump, "-A") + "\n")
		}
		if chainDeclared(saved, names[0]) {
			fmt.Fprintf(&drop, "-F %s\n-X %s\n", names[0], names[0])
		}
	}
	if del.Len()+drop.Len() == 0 {
		return ""
	}
	return "*nat\n" + del.String() + drop.String() + "COMMIT\n"
}

func iptablesJump(names [2]string) string {
	return fmt.Sprintf("-A %s -p tcp -j %s", names[1], names[0])
}

// chainDeclared reports whether iptables-save output declares chain (a line ":<chain> <policy> [counters]").
func chainDeclared(saved, chain string) bool {
	for _, l := range strings.Split(saved, "\n") {
		if strings.HasPrefix(l, ":"+chain+" ") {
			return true
		}
	}
	return false
}

func hasLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// iptablesRule spells r as iptables arguments; ok is false for a rule that does not apply to the family (a CIDR of
// the other family).
func iptablesRule(r Rule, v6 bool) (args string, ok bool, err error) {
	var match string
	switch m := r.Match; m.Kind {
	case MatchTCP:
		match = "-p tcp"
	case MatchSocketUID:
		match = fmt.Sprintf("-m owner --uid-owner %d", m.UID)
	case MatchOutInterface:
		match = "-o " + m.Interface
	case MatchDestination:
		if m.Prefix.Addr().Is6() != v6 {
			return "", false, nil
		}
		match = "-d " + m.Prefix.Masked().String()
	case MatchDestPorts:
		match = "-p tcp --dport " + strings.Replace(m.Ports.String(), "-", ":", 1)
	default:
		return "", false, fmt.Errorf("unknown match kind %d", m.Kind)
	}
	switch r.Action.Kind {
	case ActionReturn:
		return match + " -j RETURN", true, nil
	case ActionRedirect:
		if r.Match.Kind != MatchTCP && r.Match.Kind != MatchDestPorts {
			return "", false, fmt.Errorf("%s: a redirect needs a TCP match", r)
		}
		return fmt.Sprintf("%s -j REDIRECT --to-ports %d", match, r.Action.Port), true, nil
	}
	return "", false, fmt.Errorf("unknown action kind %d", r.Action.Kind)
}

func (b *IPTables) save(f ipFamily) (string, error) {
	return b.run(f.save, "", "-t", "nat")
}

func (b *IPTables) restore(f ipFamily, input string) error {
	_, err := b.run(f.restore, input, "--noflush")
	return err
}

// run executes an iptables command, in NetNS when set, and returns its standard output.
func (b *IPTables) run(name, stdin string, args ...string) (string, error) {
	if _, err := exec.LookPath(name); err != nil {
		return "", fmt.Errorf("iptables mode needs %s in the image: %w", name, err)
	}
	argv := append([]string{name}, args...)
	if b.NetNS != "" {
		argv = append([]string{"nsenter", "--net=" + b.NetNS, "--"}, argv...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), iptablesTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			msg = "timed out after " + iptablesTimeout.String()
		}
		return "", fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return stdout.String(), nil
}
