// Command proxy is the Trellis data-plane proxy. Flags may also be set through TRELLIS_PROXY_<FLAG> environment
// variables (for example TRELLIS_PROXY_LOG_LEVEL=debug); a flag on the command line wins.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/trellis-mesh/trellis/internal/identity/workload"
	"github.com/trellis-mesh/trellis/proxy"
	"github.com/trellis-mesh/trellis/proxy/admin"
	"github.com/trellis-mesh/trellis/proxy/authz"
	"github.com/trellis-mesh/trellis/proxy/node"
	"github.com/trellis-mesh/trellis/proxy/node/netns"
)

func main() {
	var o proxy.RunOptions
	var no node.Options
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	mode := fs.String("mode", "sidecar", "sidecar: serve the pod the proxy runs in; node: serve every meshed pod of the node (DaemonSet mode, see docs/daemonset-mode.md); await: wait until the proxy at --admin-addr is ready, then exit (the classic sidecar's postStart hook).")
	awaitTimeout := fs.Duration("await-timeout", 2*time.Minute, "Await mode: how long to wait for the proxy to be ready before exiting with an error.")
	fs.StringVar(&no.NodeName, "node-name", "", "Node mode: the node whose meshed pods are served (downward API spec.nodeName).")
	fs.StringVar(&no.NetNSDir, "netns-dir", netns.DefaultDir, "Node mode: the folder of the pods' network namespace files (the container runtime's, mounted from the host).")
	fs.StringVar(&no.ConfigNamespace, "config-namespace", "", "Node mode: namespace of the configuration ConfigMaps (default: --pod-namespace, the node proxy's own).")
	fs.StringVar(&no.ConfigName, "config-name", "", "Node mode: name of the first configuration ConfigMap (default trellis-proxy-config).")
	fs.StringVar(&o.OutboundAddr, "outbound-addr", ":4140", "Listen address for outbound (workload-initiated) traffic.")
	fs.StringVar(&o.InboundAddr, "inbound-addr", ":4143", "Listen address for inbound traffic to the workload.")
	fs.StringVar(&o.AdminAddr, "admin-addr", ":4191", "Listen address for /metrics, /ready, /live, /config, /shutdown.")
	fs.StringVar(&o.ConfigDir, "config-dir", "/var/run/trellis/config", "Directory holding the mounted configuration.")
	fs.DurationVar(&o.PollInterval, "config-poll-interval", proxy.DefaultPollInterval, "How often to check the configuration directory.")
	fs.BoolVar(&o.EnableShutdown, "enable-shutdown", false, "Serve POST /shutdown on the admin port.")
	fs.DurationVar(&o.GracePeriod, "grace-period", proxy.DefaultGracePeriod, "How long to drain connections on shutdown.")
	fs.DurationVar(&o.DetectTimeout, "detect-timeout", 0, "Override the configuration's protocol detection timeout (0: use the configuration's, default 1s).")
	level := fs.String("log-level", "info", "Log level: debug, info, warn or error.")
	fs.StringVar(&o.IdentityAddr, "identity-addr", "", "Identity service host:port (e.g. trellis-identity.trellis-system.svc:8080). Empty disables workload identity and mesh TLS.")
	fs.StringVar(&o.IdentityServerName, "identity-server-name", "", "DNS name the identity service's certificate must carry (default: the host of --identity-addr).")
	fs.StringVar(&o.TrustDomain, "trust-domain", proxy.DefaultTrustDomain, "The mesh's trust domain.")
	fs.StringVar(&o.PodNamespace, "pod-namespace", "", "The workload's namespace (its identity is spiffe://<trust-domain>/ns/<pod-namespace>/sa/<service-account>).")
	fs.StringVar(&o.ServiceAccount, "service-account", "", "The workload's ServiceAccount.")
	fs.StringVar(&o.PodName, "pod-name", "", "The workload's pod name (for logs).")
	fs.StringVar(&o.PodIP, "pod-ip", "", "The workload's pod IP (for logs).")
	fs.StringVar(&o.TokenFile, "token-file", workload.DefaultTokenFile, "Projected ServiceAccount token (audience identity.trellis.io) presented to the identity service.")
	fs.StringVar(&o.TrustBundleFile, "trust-bundle-file", workload.DefaultTrustBundleFile, "PEM bundle of the mesh's trust anchors.")
	fs.Func("inbound-probe-paths", "Comma-separated port:path pairs (8080:/healthz,8080:/ready) of the kubelet's HTTP probes; inbound GET and HEAD requests for them are always authorized.",
		func(v string) (err error) { o.InboundProbePaths, err = authz.ParseProbePaths(v); return err })
	fs.Func("inbound-probe-ports", "Comma-separated container ports and ranges (5432,9000-9010) of the kubelet's TCP, gRPC and HTTPS probes; all inbound traffic to them is always authorized.",
		func(v string) (err error) { o.InboundProbePorts, err = proxy.ParsePorts(v); return err })
	fs.Func("opaque-ports", "Comma-separated ports and ranges (25,7000-7010) on which protocol detection is skipped, added to the configuration's opaquePorts.",
		func(v string) (err error) { o.OpaquePorts, err = proxy.ParsePorts(v); return err })
	fs.Func("cluster-networks", "Comma-separated CIDRs whose unauthenticated clients the cluster-authenticated policy admits (default: RFC 1918 and fc00::/7).",
		func(v string) (err error) { o.ClusterNetworks, err = proxy.ParsePrefixes(v); return err })
	fs.StringVar(&o.PodLabelsFile, "pod-labels-file", proxy.DefaultPodLabelsFile, "Downward API file of the pod's labels (key=\"value\" lines), matched by the configuration's workload selectors; re-read when it changes.")
	fs.StringVar(&o.ConfigSource, "config-source", proxy.ConfigSourceAuto, "Where the configuration comes from: auto (watch the ConfigMaps through the API when the pod has a ServiceAccount token and KUBERNETES_SERVICE_HOST, with the mounted volume as the fallback; else the volume), api (as auto, but refuse to start without the API), or volume.")
	fs.VisitAll(func(f *flag.Flag) {
		env := "TRELLIS_PROXY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", env, err)
				os.Exit(2)
			}
		}
	})
	fs.Parse(os.Args[1:]) //nolint:errcheck // ExitOnError
	lvl, err := proxy.LogLevel(*level)
	if err != nil {
		fmt.Fprintf(os.Stderr, "--log-level: %v\n", err)
		os.Exit(2)
	}
	o.Log = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	switch *mode {
	case "await":
		ctx, cancel := context.WithTimeout(context.Background(), *awaitTimeout)
		err = admin.AwaitReady(ctx, o.AdminAddr, 100*time.Millisecond)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	case "sidecar":
		err = proxy.Run(context.Background(), o)
	case "node":
		no.Proxy = o
		err = node.Run(context.Background(), no)
	default:
		fmt.Fprintf(os.Stderr, "--mode %q: want sidecar, node or await\n", *mode)
		os.Exit(2)
	}
	if err != nil {
		o.Log.Error("Proxy failed", "error", err)
		os.Exit(1)
	}
}
