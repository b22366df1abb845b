// Command proxy-init programs a meshed pod's traffic redirect and exits: the workload's outbound TCP goes to the
// proxy's outbound port, TCP arriving for the workload to its inbound port. It runs as an init container with
// CAP_NET_ADMIN in the pod's network namespace; see docs/proxy-init.md. Flags may also be set through
// TRELLIS_INIT_<FLAG> environment variables (for example TRELLIS_INIT_SKIP_OUTBOUND_PORTS=5432); a flag on the
// command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/redirect"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// Exit codes.
const (
	exitFailed = 1 // the kernel refused or the rules could not be read back
	exitUsage  = 2 // bad flags or environment
)

// envPrefix starts the environment variables that override flags.
const envPrefix = "TRELLIS_INIT_"

func main() {
	os.Exit(run(os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr, redirect.NewBackend))
}

// options are the command line after parsing.
type options struct {
	mode                                   string
	outboundPort, inboundPort, adminPort   uint
	proxyUID                               uint
	skipInbound, skipOutbound, ignoredNets string
	dryRun, remove, list                   bool
	await                                  bool
	awaitTimeout                           time.Duration
}

// newBackendFunc makes the backend for a mode in the current network namespace.
type newBackendFunc func(mode redirect.Mode, netns string) (redirect.Backend, error)

func run(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer, newBackend newBackendFunc) int {
	o, err := parse(args, lookupEnv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "proxy-init: %v\n", err)
		return exitUsage
	}
	if o.await {
		return await(o, stdout, stderr)
	}
	backend, err := newBackend(redirect.Mode(o.mode), "")
	if err != nil {
		fmt.Fprintf(stderr, "proxy-init: --mode: %v\n", err)
		return exitUsage
	}
	switch {
	case o.list:
		return list(backend, stdout, stderr)
	case o.remove:
		return remove(o, backend, stdout, stderr)
	}
	cfg, err := o.config()
	if err != nil {
		fmt.Fprintf(stderr, "proxy-init: %v\n", err)
		return exitUsage
	}
	rs, err := redirect.Plan(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "proxy-init: invalid configuration: %v\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		return exitUsage
	}
	return install(o, backend, rs, stdout, stderr)
}

func parse(args []string, lookupEnv func(string) (string, bool), stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("proxy-init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.mode, "mode", string(redirect.ModeNftables), "How to program the kernel: nftables (netlink, the default) or iptables (runs iptables-restore and ip6tables-restore, for kernels without nftables).")
	fs.UintVar(&o.outboundPort, "outbound-port", wellknown.OutboundPort, "Proxy port that receives the workload's outbound TCP.")
	fs.UintVar(&o.inboundPort, "inbound-port", wellknown.InboundPort, "Proxy port that receives TCP addressed to the workload.")
	fs.UintVar(&o.adminPort, "admin-port", wellknown.AdminPort, "Proxy admin port; inbound traffic reaches it directly (kubelet probes, Prometheus).")
	fs.UintVar(&o.proxyUID, "proxy-uid", wellknown.ProxyUID, "UID the proxy runs as; its traffic is never redirected. Must not be 0.")
	fs.StringVar(&o.skipInbound, "skip-inbound-ports", "", "Comma-separated ports and ranges (e.g. 25,8000-8100) whose inbound TCP bypasses the proxy. Default none.")
	fs.StringVar(&o.skipOutbound, "skip-outbound-ports", "", "Comma-separated ports and ranges whose outbound TCP bypasses the proxy. Default none.")
	fs.StringVar(&o.ignoredNets, "ignored-cidrs", "", "Comma-separated IPv4 and IPv6 networks (CIDR) whose outbound TCP bypasses the proxy. Default none.")
	fs.BoolVar(&o.dryRun, "dry-run", false, "Print the rules that would be installed (or removed) and change nothing.")
	fs.BoolVar(&o.remove, "remove", false, "Remove every rule proxy-init installed instead of installing.")
	fs.BoolVar(&o.list, "list", false, "Print the installed rules and change nothing; exit 1 when there are none.")
	fs.BoolVar(&o.await, "await-node-proxy", false, "Install nothing: wait until the node proxy (DaemonSet mode) accepts on 127.0.0.1 at the outbound and inbound ports in this network namespace, then exit 0; exit 1 after --await-timeout.")
	fs.DurationVar(&o.awaitTimeout, "await-timeout", redirect.DefaultAwaitTimeout, "How long --await-node-proxy waits.")
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := lookupEnv(name); ok && envErr == nil {
			if err := f.Value.Set(v); err != nil {
				envErr = fmt.Errorf("%s: %w", name, err)
			}
		}
	})
	if envErr != nil {
		return o, envErr
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	return o, nil
}

// config turns the options into a redirect.Config; it checks the syntax and ranges, Plan checks the rest.
func (o options) config() (redirect.Config, error) {
	cfg := redirect.DefaultConfig()
	for _, p := range []struct {
		flag  string
		value uint
	}{{"--outbound-port", o.outboundPort}, {"--inbound-port", o.inboundPort}, {"--admin-port", o.adminPort}} {
		if p.value == 0 || p.value > math.MaxUint16 {
			return cfg, fmt.Errorf("%s: %d is not a port (1-65535)", p.flag, p.value)
		}
	}
	if o.proxyUID > math.MaxUint32-1 {
		return cfg, fmt.Errorf("--proxy-uid: %d is not a UID", o.proxyUID)
	}
	cfg.OutboundPort, cfg.InboundPort = uint16(o.outboundPort), uint16(o.inboundPort)
	cfg.ProxyPorts = []uint16{uint16(o.adminPort)}
	cfg.ProxyUID = uint32(o.proxyUID)
	var err error
	if cfg.SkipInboundPorts, err = redirect.ParsePortRanges(o.skipInbound); err != nil {
		return cfg, fmt.Errorf("--skip-inbound-ports: %w", err)
	}
	if cfg.SkipOutboundPorts, err = redirect.ParsePortRanges(o.skipOutbound); err != nil {
		return cfg, fmt.Errorf("--skip-outbound-ports: %w", err)
	}
	if cfg.IgnoredCIDRs, err = redirect.ParsePrefixes(o.ignoredNets); err != nil {
		return cfg, fmt.Errorf("--ignored-cidrs: %w", err)
	}
	return cfg, nil
}

func install(o options, b redirect.Backend, rs redirect.Ruleset, stdout, stderr io.Writer) int {
	if o.dryRun {
		fmt.Fprintf(stdout, "Dry run (mode %s): these rules would be installed; nothing was changed.\n%s", o.mode, b.Render(rs))
		return 0
	}
	if err := b.Install(rs); err != nil {
		fmt.Fprintf(stderr, "proxy-init: %v\n", err)
		return exitFailed
	}
	dump, err := b.Dump()
	if err != nil {
		fmt.Fprintf(stderr, "proxy-init: the rules were installed but cannot be read back: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "Installed the redirect rules (mode %s):\n%s", o.mode, dump)
	return 0
}

func list(b redirect.Backend, stdout, stderr io.Writer) int {
	dump, err := b.Dump()
	if err != nil {
		fmt.Fprintf(stderr, "proxy-init: %v\n", err)
		return exitFailed
	}
	fmt.Fprint(stdout, dump)
	return 0
}

func remove(o options, b redirect.Backend, stdout, stderr io.Writer) int {
	if o.dryRun {
		fmt.Fprintf(stdout, "Dry run (mode %s): every rule proxy-init installed would be removed; nothing was changed.\n", o.mode)
		return 0
	}
	if err := b.Remove(); err != nil {
		fmt.Fprintf(stderr, "proxy-init: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "Removed the redirect rules (mode %s).\n", o.mode)
	return 0
}

// await waits for the node proxy's listeners in the pod's network namespace (DaemonSet mode), so that the pod's
// other containers start only once their traffic can be carried.
func await(o options, stdout, stderr io.Writer) int {
	var addrs []string
	for _, p := range []struct {
		flag  string
		value uint
	}{{"--outbound-port", o.outboundPort}, {"--inbound-port", o.inboundPort}} {
		if p.value == 0 || p.value > math.MaxUint16 {
			fmt.Fprintf(stderr, "proxy-init: %s: %d is not a port (1-65535)\n", p.flag, p.value)
			return exitUsage
		}
		addrs = append(addrs, net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p.value))))
	}
	if o.awaitTimeout <= 0 {
		fmt.Fprintf(stderr, "proxy-init: --await-timeout: %v is not a positive duration\n", o.awaitTimeout)
		return exitUsage
	}
	start := time.Now()
	if err := redirect.AwaitListeners(context.Background(), addrs, o.awaitTimeout, 100*time.Millisecond, nil); err != nil {
		fmt.Fprintf(stderr, "proxy-init: the node proxy does not serve this pod: %v. The Trellis node proxy (the Mesh's "+
			"DaemonSet <mesh>-node-proxy in the control-plane namespace) must run on this pod's node and hold a "+
			"certificate for the pod's ServiceAccount: see its pods' logs and its GET /pods on the admin port\n", err)
		return exitFailed
	}
	fmt.Fprintf(stdout, "The node proxy serves this pod: %s accept (after %s).\n", strings.Join(addrs, " and "),
		time.Since(start).Round(time.Millisecond))
	return 0
}
