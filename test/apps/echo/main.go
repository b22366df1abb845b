// Command echo is the end-to-end suites' test workload: an HTTP server that describes each request it gets, and a
// client mode for pods that call other services.
//
//	echo [-listen :8080]              serve: / echoes the request as JSON, /healthz answers ok, /metrics counts requests
//	echo get <url> [-tries N]          client: GET url, print the body, exit 1 if no try got a 2xx answer
//	echo count <url> [-n N] [-H k:v]   client: GET url N times (bounded), print JSON counts of answers per serving
//	                                   Deployment (the pod name without its two last parts) and per status
//
// The JSON answer names the serving pod (POD_NAME, POD_NAMESPACE from the downward API, else the hostname), so a
// test can tell which backend answered.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Reply is the JSON document / answers with.
type Reply struct {
	Pod       string              `json:"pod"`
	Namespace string              `json:"namespace,omitempty"`
	Method    string              `json:"method"`
	Host      string              `json:"host"`
	Path      string              `json:"path"`
	Remote    string              `json:"remote"`
	Proto     string              `json:"proto"`
	Headers   map[string][]string `json:"headers"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "get" {
		os.Exit(get(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "count" {
		os.Exit(count(os.Args[2:]))
	}
	listen := flag.String("listen", ":8080", "address to serve on")
	flag.Parse()
	if err := serve(*listen); err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

func serve(addr string) error {
	pod := os.Getenv("POD_NAME")
	if pod == "" {
		pod, _ = os.Hostname()
	}
	ns := os.Getenv("POD_NAMESPACE")
	var requests atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprintf(w, "# HELP echo_requests_total Requests answered on /.\n# TYPE echo_requests_total counter\n")
		fmt.Fprintf(w, "echo_requests_total %d\n", requests.Load())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Reply{Pod: pod, Namespace: ns, Method: r.Method, Host: r.Host,
			Path: r.URL.Path, Remote: r.RemoteAddr, Proto: r.Proto, Headers: r.Header})
	})
	fmt.Println("echo: serving on", addr)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// On SIGTERM: finish the requests in flight (at most 5 s) and end cleanly, so a stopped pod's container ends
	// as Completed rather than Error.
	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-stop.Done():
	}
	ctx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	return srv.Shutdown(ctx)
}

func get(args []string) int {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	tries := fs.Int("tries", 1, "attempts, one second apart")
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: echo get <url> [-tries N]")
		return 2
	}
	url := args[0]
	_ = fs.Parse(args[1:])
	c := &http.Client{Timeout: 3 * time.Second}
	var last error
	for i := 0; i < *tries; i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		resp, err := c.Get(url)
		if err != nil {
			last = err
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			last = fmt.Errorf("status %s: reading the body: %w", resp.Status, err)
		case resp.StatusCode/100 != 2:
			last = fmt.Errorf("status %s", resp.Status)
		default:
			os.Stdout.Write(body)
			return 0
		}
	}
	fmt.Fprintln(os.Stderr, "echo get:", last)
	return 1
}

// Counts is what count prints: answers per serving Deployment, statuses, and transport errors.
type Counts struct {
	Backends map[string]int `json:"backends"`
	Statuses map[int]int    `json:"statuses"`
	Errors   int            `json:"errors"`
}

func count(args []string) int {
	fs := flag.NewFlagSet("count", flag.ExitOnError)
	n := fs.Int("n", 100, "requests to send (at most 100000)")
	header := fs.String("H", "", "a request header, name:value")
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: echo count <url> [-n N] [-H name:value]")
		return 2
	}
	url := args[0]
	_ = fs.Parse(args[1:])
	if *n < 1 || *n > 100000 {
		fmt.Fprintln(os.Stderr, "echo count: -n must be between 1 and 100000")
		return 2
	}
	name, value, hasHeader := strings.Cut(*header, ":")
	c := &http.Client{Timeout: 5 * time.Second}
	out := Counts{Backends: map[string]int{}, Statuses: map[int]int{}}
	deadline := time.Now().Add(5 * time.Minute)
	for i := 0; i < *n && time.Now().Before(deadline); i++ {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if hasHeader && *header != "" {
			req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		resp, err := c.Do(req)
		if err != nil {
			out.Errors++
			continue
		}
		var r Reply
		_ = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		out.Statuses[resp.StatusCode]++
		if resp.StatusCode == http.StatusOK {
			out.Backends[deployment(r.Pod)]++
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
	return 0
}

// deployment strips a pod name's ReplicaSet hash and pod suffix: web-v1-7d9f8-abcde -> web-v1.
func deployment(pod string) string {
	parts := strings.Split(pod, "-")
	if len(parts) < 3 {
		return pod
	}
	return strings.Join(parts[:len(parts)-2], "-")
}
