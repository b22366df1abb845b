package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/redirect"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestParse(t *testing.T) {
	defaults := options{mode: "nftables", outboundPort: 4140, inboundPort: 4143, adminPort: 4191, proxyUID: 2102,
		awaitTimeout: redirect.DefaultAwaitTimeout}
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		want    func(*options)
		wantErr string
	}{
		{name: "defaults", want: func(*options) {}},
		{name: "every flag", args: []string{"--mode=iptables", "--outbound-port=5140", "--inbound-port=5143",
			"--admin-port=5191", "--proxy-uid=1000", "--skip-inbound-ports=9000", "--skip-outbound-ports=25,8000-8100",
			"--ignored-cidrs=10.0.0.0/8", "--dry-run", "--remove", "--list", "--await-node-proxy", "--await-timeout=5s"},
			want: func(o *options) {
				*o = options{mode: "iptables", outboundPort: 5140, inboundPort: 5143, adminPort: 5191, proxyUID: 1000,
					skipInbound: "9000", skipOutbound: "25,8000-8100", ignoredNets: "10.0.0.0/8", dryRun: true, remove: true,
					list: true, await: true, awaitTimeout: 5 * time.Second}
			}},
		{name: "environment", env: map[string]string{"TRELLIS_INIT_SKIP_OUTBOUND_PORTS": "5432",
			"TRELLIS_INIT_PROXY_UID": "3000", "TRELLIS_INIT_DRY_RUN": "true", "TRELLIS_INIT_IGNORED_CIDRS": "fd00::/8"},
			want: func(o *options) { o.skipOutbound, o.proxyUID, o.dryRun, o.ignoredNets = "5432", 3000, true, "fd00::/8" }},
		{name: "a flag wins over the environment", args: []string{"--skip-outbound-ports=25"},
			env:  map[string]string{"TRELLIS_INIT_SKIP_OUTBOUND_PORTS": "5432"},
			want: func(o *options) { o.skipOutbound = "25" }},
		{name: "bad environment value", env: map[string]string{"TRELLIS_INIT_INBOUND_PORT": "http"},
			wantErr: "TRELLIS_INIT_INBOUND_PORT: parse error"},
		{name: "unknown flag", args: []string{"--outbound"}, wantErr: "flag provided but not defined"},
		{name: "stray argument", args: []string{"install"}, wantErr: "unexpected arguments: install"},
		{name: "help", args: []string{"-h"}, wantErr: flag.ErrHelp.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse(tc.args, env(tc.env), io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			want := defaults
			tc.want(&want)
			if err != nil || got != want {
				t.Fatalf("got %+v, %v; want %+v", got, err, want)
			}
		})
	}
}

func TestOptionsConfig(t *testing.T) {
	base := options{mode: "nftables", outboundPort: 4140, inboundPort: 4143, adminPort: 4191, proxyUID: 2102}
	t.Run("lists", func(t *testing.T) {
		o := base
		o.adminPort, o.skipInbound, o.skipOutbound, o.ignoredNets = 9191, "9000", "25, 8000-8100", "10.0.0.0/8,fd00::/8"
		got, err := o.config()
		if err != nil {
			t.Fatal(err)
		}
		want := redirect.DefaultConfig()
		want.ProxyPorts = []uint16{9191}
		want.SkipInboundPorts = []redirect.PortRange{redirect.Port(9000)}
		want.SkipOutboundPorts = []redirect.PortRange{redirect.Port(25), {First: 8000, Last: 8100}}
		want.IgnoredCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v\nwant %+v", got, want)
		}
	})
	for _, tc := range []struct {
		name    string
		change  func(*options)
		wantErr string
	}{
		{"port 0", func(o *options) { o.outboundPort = 0 }, "--outbound-port: 0 is not a port (1-65535)"},
		{"port too large", func(o *options) { o.adminPort = 70000 }, "--admin-port: 70000 is not a port (1-65535)"},
		{"UID too large", func(o *options) { o.proxyUID = 1 << 32 }, "--proxy-uid: 4294967296 is not a UID"},
		{"bad inbound list", func(o *options) { o.skipInbound = "9000,x" }, `--skip-inbound-ports: "x" is not a port (1-65535)`},
		{"bad outbound range", func(o *options) { o.skipOutbound = "9-1" }, "--skip-outbound-ports: 9-1: the range is reversed"},
		{"bad CIDR", func(o *options) { o.ignoredNets = "10.0.0.0/40" }, `--ignored-cidrs: "10.0.0.0/40" is not a CIDR`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.change(&o)
			if _, err := o.config(); err == nil || err.Error() != tc.wantErr {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// fakeBackend records calls and fails when told to.
type fakeBackend struct {
	installed *redirect.Ruleset
	removed   bool
	err       error
}

func (f *fakeBackend) Install(rs redirect.Ruleset) error {
	if f.err != nil {
		return f.err
	}
	f.installed = &rs
	return nil
}

func (f *fakeBackend) Remove() error { f.removed = f.err == nil; return f.err }

func (f *fakeBackend) Dump() (string, error) {
	if f.installed == nil {
		return "", redirect.ErrNotInstalled
	}
	return "dump of " + f.installed.Chains[0].Name + "\n", nil
}

func (f *fakeBackend) Render(rs redirect.Ruleset) string { return rs.String() }

func TestRun(t *testing.T) {
	unavailable := fmt.Errorf("%w: conn.Receive: operation not supported; ...", redirect.ErrUnavailable)
	for _, tc := range []struct {
		name       string
		args       []string
		failWith   error
		wantCode   int
		wantOut    string
		wantErr    string
		wantCalled string // "install", "remove" or ""
	}{
		{name: "install prints what the kernel holds", wantCode: 0,
			wantOut: "Installed the redirect rules (mode nftables):\ndump of output\n", wantCalled: "install"},
		{name: "dry run changes nothing", args: []string{"--dry-run", "--skip-inbound-ports=9000"}, wantCode: 0,
			wantOut: "tcp dport 9000 return comment \"skipped inbound port\""},
		{name: "list without rules", args: []string{"--list"}, wantCode: 1,
			wantErr: "proxy-init: no Trellis redirect rules are installed"},
		{name: "remove", args: []string{"--remove"}, wantOut: "Removed the redirect rules (mode nftables).", wantCalled: "remove"},
		{name: "dry-run remove", args: []string{"--remove", "--dry-run"}, wantOut: "would be removed; nothing was changed"},
		{name: "kernel without nftables", failWith: unavailable, wantCode: 1,
			wantErr: "proxy-init: nftables is not available in this kernel: conn.Receive"},
		{name: "failed removal", args: []string{"--remove"}, failWith: errors.New("boom"), wantCode: 1, wantErr: "proxy-init: boom"},
		{name: "invalid configuration", args: []string{"--inbound-port=4140"}, wantCode: 2,
			wantErr: "proxy-init: invalid configuration: outbound and inbound ports must differ (both are 4140)"},
		{name: "root proxy", args: []string{"--proxy-uid=0"}, wantCode: 2, wantErr: "proxy UID must not be 0"},
		{name: "bad list", args: []string{"--skip-outbound-ports=80,http"}, wantCode: 2, wantErr: `"http" is not a port`},
		{name: "unknown mode", args: []string{"--mode=bpf"}, wantCode: 2, wantErr: `--mode: unknown mode "bpf"`},
		{name: "help", args: []string{"--help"}, wantCode: 0, wantErr: "-skip-outbound-ports"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeBackend{err: tc.failWith}
			newBackend := func(mode redirect.Mode, netns string) (redirect.Backend, error) {
				if _, err := redirect.NewBackend(mode, netns); err != nil {
					return nil, err
				}
				return fake, nil
			}
			var stdout, stderr strings.Builder
			code := run(tc.args, env(nil), &stdout, &stderr, newBackend)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d; stderr: %s", code, tc.wantCode, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.wantOut) {
				t.Errorf("stdout %q lacks %q", stdout.String(), tc.wantOut)
			}
			if !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.wantErr)
			}
			called := ""
			switch {
			case fake.installed != nil:
				called = "install"
			case fake.removed:
				called = "remove"
			}
			if called != tc.wantCalled {
				t.Errorf("backend call %q, want %q", called, tc.wantCalled)
			}
		})
	}
}
