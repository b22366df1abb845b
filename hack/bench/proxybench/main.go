// Command proxybench compares HTTP/1.1 request latency and throughput directly, through the Trellis proxy and through
// HAProxy, on one machine, in one run. It needs root: everything runs in a network namespace it creates, where the
// Trellis proxy is reached the way a workload reaches it, through an iptables REDIRECT of a cluster IP and
// SO_ORIGINAL_DST.
//
// Usage (from the repository root; make bench-proxy does this):
//
//	go build -o bin/proxy ./cmd/proxy && go build -o bin/proxybench ./hack/bench/proxybench
//	sudo bin/proxybench -proxy bin/proxy -fortio bin/fortio -rounds 3 -duration 10s
//
// proxybench backend ADDR runs the Go backend used by every target (64-byte responses).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	ns        = "trellis-bench"
	backend   = "127.0.0.1:18080"
	haproxyAt = "127.0.0.1:18082"
	clusterIP = "10.96.0.10"
)

type options struct {
	proxy, fortio, haproxy string
	rounds                 int
	duration               time.Duration
	qps, latencyConns      int
	maxConns               int
	sutCPU, loadCPU        string
	out                    string
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "backend" {
		serveBackend(os.Args[2])
		return
	}
	var o options
	flag.StringVar(&o.proxy, "proxy", "bin/proxy", "Trellis proxy binary.")
	flag.StringVar(&o.fortio, "fortio", "bin/fortio", "fortio binary.")
	flag.StringVar(&o.haproxy, "haproxy", "haproxy", "HAProxy binary.")
	flag.IntVar(&o.rounds, "rounds", 3, "Rounds; each round runs every target once per mode. Medians are reported.")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "Length of each load run.")
	flag.IntVar(&o.qps, "qps", 1000, "Fixed rate of the latency runs.")
	flag.IntVar(&o.latencyConns, "latency-conns", 4, "Connections of the latency runs.")
	flag.IntVar(&o.maxConns, "max-conns", 16, "Connections of the throughput runs (max rate).")
	flag.StringVar(&o.sutCPU, "sut-cpu", "0", "CPU list for the proxy under test (taskset -c).")
	flag.StringVar(&o.loadCPU, "load-cpu", "1", "CPU list for the load generator and the backend.")
	flag.StringVar(&o.out, "out", "", "Also write the markdown table to this file.")
	flag.Parse()
	// Interrupting the run still removes the namespace and stops the processes it started.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

// serveBackend answers every request with 64 bytes.
func serveBackend(addr string) {
	body := []byte(strings.Repeat("x", 64))
	srv := &http.Server{Addr: addr, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write(body)
	})}
	fmt.Fprintln(os.Stderr, srv.ListenAndServe())
	os.Exit(1)
}

type target struct {
	name string
	url  string
	pid  int // process whose CPU time is charged; 0 for direct
}

type sample struct {
	p50, p99 float64 // milliseconds
	qps      float64
	cpuUsReq float64
	errors   int
}

func run(ctx context.Context, o options) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespace and iptables)")
	}
	tmp, err := os.MkdirTemp("", "trellis-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	_ = exec.Command("ip", "netns", "del", ns).Run()
	if err := sh("ip", "netns", "add", ns); err != nil {
		return err
	}
	defer func() { _ = exec.Command("ip", "netns", "del", ns).Run() }()
	for _, c := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "addr", "add", clusterIP + "/32", "dev", "lo"},
		// The workload's connections to the cluster IP go to the proxy's outbound port, as proxy-init arranges.
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", clusterIP, "--dport", "80", "-j", "REDIRECT",
			"--to-ports", "4140"},
	} {
		if err := sh(append([]string{"ip", "netns", "exec", ns}, c...)...); err != nil {
			return err
		}
	}
	self, _ := os.Executable()
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}()
	start := func(env []string, cpu string, args ...string) (*exec.Cmd, error) {
		full := append([]string{"netns", "exec", ns, "taskset", "-c", cpu}, args...)
		cmd := exec.Command("ip", full...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		procs = append(procs, cmd)
		return cmd, nil
	}
	if _, err := start([]string{"GOMAXPROCS=1"}, o.loadCPU, self, "backend", backend); err != nil {
		return err
	}
	cfgDir := filepath.Join(tmp, "config")
	_ = os.Mkdir(cfgDir, 0o755)
	doc := fmt.Sprintf(`{"apiVersion":"proxy.trellis.io/v1alpha1","version":"bench","services":[{"name":"backend",
	  "namespace":"bench","clusterIPs":[%q],"port":80,"backends":[{"name":"backend","endpoints":[{"address":%q}]}]}]}`,
		clusterIP, backend)
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(doc), 0o644); err != nil {
		return err
	}
	trellis, err := start([]string{"GOMAXPROCS=1"}, o.sutCPU, o.proxy, "--config-dir="+cfgDir,
		"--outbound-addr=127.0.0.1:4140", "--inbound-addr=127.0.0.1:4143", "--admin-addr=127.0.0.1:4191",
		"--log-level=warn")
	if err != nil {
		return err
	}
	hcfg := filepath.Join(tmp, "haproxy.cfg")
	if err := os.WriteFile(hcfg, []byte(fmt.Sprintf(`global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind %s
    default_backend be
backend be
    server s1 %s
`, haproxyAt, backend)), 0o644); err != nil {
		return err
	}
	hap, err := start(nil, o.sutCPU, o.haproxy, "-f", hcfg, "-db")
	if err != nil {
		return err
	}
	targets := []target{
		{name: "direct", url: "http://" + backend + "/"},
		{name: "trellis", url: "http://" + clusterIP + "/", pid: trellis.Process.Pid},
		{name: "haproxy", url: "http://" + haproxyAt + "/", pid: hap.Process.Pid},
	}
	for _, t := range targets {
		if err := waitReady(o, t.url); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
	}
	lat := map[string][]sample{}
	thr := map[string][]sample{}
	loadBefore := loadavg()
	for r := 0; r < o.rounds; r++ {
		for _, t := range targets {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s, err := load(o, t, o.qps, o.latencyConns)
			if err != nil {
				return err
			}
			lat[t.name] = append(lat[t.name], s)
			s, err = load(o, t, 0, o.maxConns)
			if err != nil {
				return err
			}
			thr[t.name] = append(thr[t.name], s)
			fmt.Fprintf(os.Stderr, "round %d %-8s latency p50 %.3fms p99 %.3fms | max %.0f rps, %.1f µs/req\n", r+1,
				t.name, lat[t.name][r].p50, lat[t.name][r].p99, s.qps, s.cpuUsReq)
		}
	}
	rss := map[string]string{"trellis": rssOf(trellis.Process.Pid), "haproxy": rssOf(hap.Process.Pid)}
	table := report(o, targets, lat, thr, rss)
	table += fmt.Sprintf("\nLoad average (1, 5, 15 min) before: %s; after: %s (%d CPUs).\n", loadBefore, loadavg(),
		runtime.NumCPU())
	fmt.Print(table)
	if o.out != "" {
		return os.WriteFile(o.out, []byte(table), 0o644)
	}
	return nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func waitReady(o options, url string) error {
	var err error
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		cmd := exec.Command("ip", "netns", "exec", ns, o.fortio, "curl", "-quiet", url)
		if err = cmd.Run(); err == nil {
			return nil
		}
	}
	return err
}

// load runs fortio once (qps 0 = as fast as possible) and charges the target process's CPU time to the requests.
func load(o options, t target, qps, conns int) (sample, error) {
	out := filepath.Join(os.TempDir(), fmt.Sprintf("trellis-bench-%d.json", os.Getpid()))
	defer os.Remove(out)
	cpu0 := cpuTicks(t.pid)
	args := []string{"netns", "exec", ns, "taskset", "-c", o.loadCPU, o.fortio, "load", "-quiet", "-uniform",
		"-r", "0.00001", "-c", strconv.Itoa(conns), "-qps", strconv.Itoa(qps), "-t", o.duration.String(),
		"-json", out, t.url}
	ctx, cancel := context.WithTimeout(context.Background(), o.duration+time.Minute)
	defer cancel()
	if b, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		return sample{}, fmt.Errorf("fortio on %s: %w: %s", t.name, err, b)
	}
	cpu1 := cpuTicks(t.pid)
	var res struct {
		ActualQPS         float64
		DurationHistogram struct {
			Count       int
			Percentiles []struct{ Percentile, Value float64 }
		}
		RetCodes map[string]int
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return sample{}, err
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return sample{}, err
	}
	s := sample{qps: res.ActualQPS}
	for _, p := range res.DurationHistogram.Percentiles {
		switch p.Percentile {
		case 50:
			s.p50 = p.Value * 1000
		case 99:
			s.p99 = p.Value * 1000
		}
	}
	s.errors = res.DurationHistogram.Count - res.RetCodes["200"]
	if t.pid != 0 && res.DurationHistogram.Count > 0 {
		s.cpuUsReq = float64(cpu1-cpu0) * 1e6 / float64(clockTicks) / float64(res.DurationHistogram.Count)
	}
	return s, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

// cpuTicks returns utime+stime of pid (including waited-for children), in clock ticks.
func cpuTicks(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	var total int64
	for _, i := range []int{11, 12} { // fields 14 and 15 of stat: utime, stime
		v, _ := strconv.ParseInt(f[i], 10, 64)
		total += v
	}
	return total
}

func rssOf(pid int) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	defer f.Close()
	var rss, hwm string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			rss = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			hwm = strings.TrimSpace(v)
		}
	}
	return fmt.Sprintf("%s (peak %s)", rss, hwm)
}

func median(xs []float64) float64 {
	s := append([]float64{}, xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func field(ss []sample, f func(sample) float64) float64 {
	xs := make([]float64, len(ss))
	for i, s := range ss {
		xs[i] = f(s)
	}
	return median(xs)
}

func report(o options, targets []target, lat, thr map[string][]sample, rss map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Medians of %d rounds; latency at %d rps over %d connections, throughput at max rate over %d "+
		"connections, %s per run; proxy on CPU %s (GOMAXPROCS=1 / nbthread 1), fortio and backend on CPU %s.\n\n",
		o.rounds, o.qps, o.latencyConns, o.maxConns, o.duration, o.sutCPU, o.loadCPU)
	b.WriteString("| target | p50 ms | p99 ms | added p50 ms | added p99 ms | max rps | vs direct | vs HAProxy | CPU µs/req | RSS | errors |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	d50 := field(lat["direct"], func(s sample) float64 { return s.p50 })
	d99 := field(lat["direct"], func(s sample) float64 { return s.p99 })
	dq := field(thr["direct"], func(s sample) float64 { return s.qps })
	hq := field(thr["haproxy"], func(s sample) float64 { return s.qps })
	for _, t := range targets {
		p50 := field(lat[t.name], func(s sample) float64 { return s.p50 })
		p99 := field(lat[t.name], func(s sample) float64 { return s.p99 })
		q := field(thr[t.name], func(s sample) float64 { return s.qps })
		cpu := field(thr[t.name], func(s sample) float64 { return s.cpuUsReq })
		errs := 0
		for _, s := range append(append([]sample{}, lat[t.name]...), thr[t.name]...) {
			errs += s.errors
		}
		added50, added99, cpuS, rssS := "—", "—", "—", "—"
		if t.name != "direct" {
			added50, added99 = fmt.Sprintf("%.3f", p50-d50), fmt.Sprintf("%.3f", p99-d99)
			cpuS, rssS = fmt.Sprintf("%.1f", cpu), rss[t.name]
		}
		fmt.Fprintf(&b, "| %s | %.3f | %.3f | %s | %s | %.0f | %.2f× | %.2f× | %s | %s | %d |\n", t.name, p50, p99,
			added50, added99, q, q/dq, q/hq, cpuS, rssS, errs)
	}
	return b.String()
}
