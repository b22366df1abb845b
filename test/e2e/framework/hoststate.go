package framework

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// HostState is what the test ground may change on the host: network namespaces, links, routes, iptables rules
// (nft and legacy back ends), sysctls kubelet rewrites, mounts, cgroups and processes. Compare a capture taken
// before cluster-up with one taken after cluster-down to prove the cluster leaves nothing behind.
type HostState struct {
	Netns, Links, Routes, Iptables, Sysctls, Mounts, Cgroups, Processes []string
}

// hostSysctls are the host-wide sysctls kubelet sets at start.
var hostSysctls = []string{"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes"}

// CaptureHostState reads the host's state, limited to what could belong to the test ground whose files are in
// stateDir, so that other work on the machine does not count: namespaces, links, routes and iptables rules that
// name the cluster's interfaces, addresses or chains; mounts below stateDir and the fixed kubelet, containerd and
// netns paths; processes whose command line names stateDir (the daemons, containerd's shims) or that run in a
// pod's cgroup (below the node's cgroup root, /<NodeName>).
func CaptureHostState(ctx context.Context, stateDir string) (*HostState, error) {
	var s HostState
	var err error
	lines := func(name string, args ...string) []string {
		out, cerr := exec.CommandContext(ctx, name, args...).Output()
		if cerr != nil && err == nil {
			err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), cerr)
		}
		return nonEmpty(string(out))
	}
	for _, n := range lines("ip", "netns", "list") {
		if strings.HasPrefix(n, NetNS) || strings.HasPrefix(n, "cni-") {
			s.Netns = append(s.Netns, n)
		}
	}
	for _, l := range lines("ip", "-o", "link", "show") {
		if f := strings.Fields(l); len(f) > 1 && clusterText(f[1]) {
			s.Links = append(s.Links, strings.TrimSuffix(f[1], ":"))
		}
	}
	for _, r := range lines("ip", "route", "show", "table", "all") {
		if clusterText(r) {
			s.Routes = append(s.Routes, r)
		}
	}
	s.Iptables = iptablesRules(ctx)
	for _, k := range hostSysctls {
		b, _ := os.ReadFile("/proc/sys/" + strings.ReplaceAll(k, ".", "/"))
		s.Sysctls = append(s.Sysctls, k+"="+strings.TrimSpace(string(b)))
	}
	b, rerr := os.ReadFile("/proc/self/mounts")
	if rerr != nil {
		return nil, rerr
	}
	for _, l := range nonEmpty(string(b)) {
		if f := strings.Fields(l); len(f) > 1 && clusterPath(stateDir, f[1]) {
			s.Mounts = append(s.Mounts, f[1])
		}
	}
	s.Cgroups, _ = filepath.Glob("/sys/fs/cgroup/*/" + NodeName)
	s.Processes = clusterProcesses(stateDir)
	return &s, err
}

// clusterText reports whether a link, route or rule names the test ground's interfaces, address ranges or the
// chains kube-proxy, kubelet and the CNI plugins create.
func clusterText(s string) bool {
	for _, m := range []string{"trellis0", "cni0", "10.200.0.", "10.244.", "10.96.", "KUBE-", "CNI-"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// iptablesRules lists the host's cluster-related iptables rules of both back ends. Legacy tables are read only if
// they exist already (reading one would create it).
func iptablesRules(ctx context.Context) []string {
	var out []string
	list := func(tool, table string) {
		if _, err := exec.LookPath(tool); err != nil {
			return
		}
		b, _ := exec.CommandContext(ctx, tool, "-t", table, "-S").Output()
		for _, l := range nonEmpty(string(b)) {
			if clusterText(l) {
				out = append(out, tool+" -t "+table+" "+l)
			}
		}
	}
	for _, fam := range []struct{ nft, legacy, names string }{
		{"iptables-nft", "iptables-legacy", "/proc/net/ip_tables_names"},
		{"ip6tables-nft", "ip6tables-legacy", "/proc/net/ip6_tables_names"},
	} {
		for _, t := range []string{"filter", "nat", "mangle", "raw"} {
			list(fam.nft, t)
		}
		b, _ := os.ReadFile(fam.names)
		for _, t := range nonEmpty(string(b)) {
			list(fam.legacy, t)
		}
	}
	return out
}

func clusterPath(stateDir, p string) bool {
	for _, prefix := range []string{"/run/netns", "/var/run/netns", "/run/containerd", "/var/lib/kubelet",
		"/var/lib/containerd", "/opt/containerd"} {
		if strings.HasPrefix(p, prefix) {
			return true
		}
	}
	return strings.HasPrefix(p, stateDir+"/")
}

// clusterProcesses lists running processes of the test ground as "pid command".
func clusterProcesses(stateDir string) []string {
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		cmd := strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")
		cg, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "cgroup"))
		if strings.Contains(cmd, stateDir+"/") || strings.Contains(string(cg), "/"+NodeName+"/") {
			out = append(out, d.Name()+" "+cmd)
		}
	}
	return out
}

// Leftovers lists what after has and s (the state before) has not, and sysctls whose values differ.
func (s *HostState) Leftovers(after *HostState) []string {
	var out []string
	diff := func(what string, before, now []string) {
		seen := map[string]bool{}
		for _, b := range before {
			seen[b] = true
		}
		for _, n := range now {
			if !seen[n] {
				out = append(out, what+": "+n)
			}
		}
	}
	diff("netns", s.Netns, after.Netns)
	diff("link", s.Links, after.Links)
	diff("route", s.Routes, after.Routes)
	diff("iptables", s.Iptables, after.Iptables)
	diff("sysctl", s.Sysctls, after.Sysctls)
	diff("mount", s.Mounts, after.Mounts)
	diff("cgroup", s.Cgroups, after.Cgroups)
	diff("process", s.Processes, after.Processes)
	sort.Strings(out)
	return out
}

func nonEmpty(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
