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

// CaptureHostState reads the host's state. Mounts and processes are limited to what could belong to the test
// ground whose files are in stateDir: mounts below it and below the fixed kubelet/containerd/netns paths;
// processes whose command line names stateDir (the daemons, containerd's shims) or that run in a pod's cgroup.
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
	s.Netns = lines("ip", "netns", "list")
	for _, l := range lines("ip", "-o", "link", "show") {
		if f := strings.Fields(l); len(f) > 1 {
			s.Links = append(s.Links, strings.TrimSuffix(f[1], ":"))
		}
	}
	s.Routes = lines("ip", "route", "show", "table", "all")
	for _, table := range []string{"filter", "nat", "mangle", "raw"} {
		for _, backend := range []string{"iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"} {
			if _, lerr := exec.LookPath(backend); lerr != nil {
				continue
			}
			out, _ := exec.CommandContext(ctx, backend, "-t", table, "-S").CombinedOutput()
			for _, l := range nonEmpty(string(out)) {
				s.Iptables = append(s.Iptables, backend+" "+table+": "+l)
			}
		}
	}
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
	s.Cgroups, _ = filepath.Glob("/sys/fs/cgroup/*/kubepods")
	s.Processes = clusterProcesses(stateDir)
	return &s, err
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
		if strings.Contains(cmd, stateDir+"/") || strings.Contains(string(cg), "/kubepods") {
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
