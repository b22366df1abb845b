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

	"github.com/trellis-mesh/trellis/proxy"
)

func main() {
	var o proxy.RunOptions
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	fs.StringVar(&o.OutboundAddr, "outbound-addr", ":4140", "Listen address for outbound (workload-initiated) traffic.")
	fs.StringVar(&o.InboundAddr, "inbound-addr", ":4143", "Listen address for inbound traffic to the workload.")
	fs.StringVar(&o.AdminAddr, "admin-addr", ":4191", "Listen address for /metrics, /ready, /live, /config, /shutdown.")
	fs.StringVar(&o.ConfigDir, "config-dir", "/var/run/trellis/config", "Directory holding the mounted configuration.")
	fs.DurationVar(&o.PollInterval, "config-poll-interval", proxy.DefaultPollInterval, "How often to check the configuration directory.")
	fs.BoolVar(&o.EnableShutdown, "enable-shutdown", false, "Serve POST /shutdown on the admin port.")
	fs.DurationVar(&o.GracePeriod, "grace-period", proxy.DefaultGracePeriod, "How long to drain connections on shutdown.")
	fs.DurationVar(&o.DetectTimeout, "detect-timeout", 0, "Override the configuration's protocol detection timeout (0: use the configuration's, default 1s).")
	level := fs.String("log-level", "info", "Log level: debug, info, warn or error.")
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
	if err := proxy.Run(context.Background(), o); err != nil {
		o.Log.Error("Proxy failed", "error", err)
		os.Exit(1)
	}
}
