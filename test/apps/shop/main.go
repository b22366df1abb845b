// Command shop is the demo application the end-to-end suites and the demo mesh: three services that call each
// other the way a small web shop does, written with nothing mesh-specific in them.
//
//	shop web      [-listen :8080] [-catalog http://catalog:8080] [-ratings ratings:9090]
//	              GET /       calls catalog over HTTP and ratings over gRPC, answers with both as JSON
//	shop catalog  [-listen :8080]   GET /items answers a fixed list; /healthz
//	shop ratings  [-listen :9090]   gRPC health service (grpc.health.v1.Health/Check) standing in for a ratings API
//	shop load     -url http://web:8080/ [-requests N] [-concurrency C] [-rps R]
//	              sends N requests (bounded in number and time), prints the success count, exits 1 if any failed
//
// Each answer names the pod that served it (POD_NAME from the downward API, else the hostname), so a test can see
// which replica answered.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: shop web|catalog|ratings|load [flags]")
		os.Exit(2)
	}
	role, args := os.Args[1], os.Args[2:]
	var err error
	switch role {
	case "web":
		err = web(args)
	case "catalog":
		err = catalog(args)
	case "ratings":
		err = ratings(args)
	case "load":
		err = load(args)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "shop:", err)
		os.Exit(1)
	}
}

func podName() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, _ := os.Hostname()
	return h
}

func healthz(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }

// Page is what web answers.
type Page struct {
	Pod     string   `json:"pod"`
	Items   []string `json:"items"`
	Catalog string   `json:"catalogPod"`
	Ratings string   `json:"ratings"`
}

func web(args []string) error {
	fs := flag.NewFlagSet("web", flag.ExitOnError)
	listen := fs.String("listen", ":8080", "address to serve on")
	catalogURL := fs.String("catalog", "http://catalog:8080", "catalog's base URL")
	ratingsAddr := fs.String("ratings", "ratings:9090", "ratings' gRPC address")
	_ = fs.Parse(args)
	conn, err := grpc.NewClient(*ratingsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ratingsClient := healthpb.NewHealthClient(conn)
	httpClient := &http.Client{Timeout: 5 * time.Second}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", healthz)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		page := Page{Pod: podName()}
		resp, err := httpClient.Get(*catalogURL + "/items")
		if err != nil {
			http.Error(w, "catalog: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		var items struct {
			Pod   string   `json:"pod"`
			Items []string `json:"items"`
		}
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&items) != nil {
			http.Error(w, fmt.Sprintf("catalog answered %d", resp.StatusCode), http.StatusBadGateway)
			return
		}
		page.Items, page.Catalog = items.Items, items.Pod
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		hc, err := ratingsClient.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			http.Error(w, "ratings: "+err.Error(), http.StatusBadGateway)
			return
		}
		page.Ratings = hc.GetStatus().String()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(page)
	})
	return serve(*listen, mux)
}

func catalog(args []string) error {
	fs := flag.NewFlagSet("catalog", flag.ExitOnError)
	listen := fs.String("listen", ":8080", "address to serve on")
	_ = fs.Parse(args)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", healthz)
	mux.HandleFunc("/items", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"pod": podName(), "items": []string{"trellis", "pergola", "arbor"}})
	})
	return serve(*listen, mux)
}

func ratings(args []string) error {
	fs := flag.NewFlagSet("ratings", flag.ExitOnError)
	listen := fs.String("listen", ":9090", "address to serve on")
	_ = fs.Parse(args)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	go func() {
		<-stop.Done()
		s.GracefulStop()
	}()
	return s.Serve(l)
}

// serve serves h on addr until SIGTERM, then finishes the requests in flight (at most shutdownGrace) and returns nil,
// so a stopped pod's container ends as Completed rather than Error.
func serve(addr string, h http.Handler) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	return serveUntilStopped(srv)
}

const shutdownGrace = 5 * time.Second

func serveUntilStopped(srv *http.Server) error {
	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-stop.Done():
	}
	ctx, done := context.WithTimeout(context.Background(), shutdownGrace)
	defer done()
	return srv.Shutdown(ctx)
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	url := fs.String("url", "http://web:8080/", "URL to request")
	requests := fs.Int("requests", 100, "number of requests (bounded)")
	concurrency := fs.Int("concurrency", 4, "requests in flight")
	rps := fs.Int("rps", 50, "request rate limit (0: none)")
	deadline := fs.Duration("deadline", 2*time.Minute, "stop after this long whatever happens")
	_ = fs.Parse(args)
	if *requests > 100000 || *concurrency < 1 || *concurrency > 256 {
		return errors.New("requests must be at most 100000 and concurrency between 1 and 256")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *deadline)
	defer cancel()
	client := &http.Client{Timeout: 10 * time.Second}
	var ok, failed atomic.Int64
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < *concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
				resp, err := client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil || resp.StatusCode != http.StatusOK {
					failed.Add(1)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	var tick <-chan time.Time
	if *rps > 0 {
		t := time.NewTicker(time.Second / time.Duration(*rps))
		defer t.Stop()
		tick = t.C
	}
send:
	for i := 0; i < *requests; i++ {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				break send
			}
		}
		select {
		case jobs <- struct{}{}:
		case <-ctx.Done():
			break send
		}
	}
	close(jobs)
	wg.Wait()
	fmt.Printf("ok=%d failed=%d\n", ok.Load(), failed.Load())
	if failed.Load() > 0 || ok.Load() < int64(*requests) {
		return fmt.Errorf("%d of %d requests failed or were not sent", int64(*requests)-ok.Load(), *requests)
	}
	return nil
}
