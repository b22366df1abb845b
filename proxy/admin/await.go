package admin

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// AwaitReady polls GET /ready on the admin listener at addr ("host:port"; an empty or unspecified host means the
// loopback) every interval until it answers 200, and returns nil then. It returns an error naming the last answer
// when ctx ends first. The classic sidecar layout runs it as the proxy container's postStart hook, so that the
// kubelet starts the application containers only once the proxy is ready.
func AwaitReady(ctx context.Context, addr string, interval time.Duration) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/ready"
	client := &http.Client{Timeout: time.Second}
	last := "no answer yet"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else if ctx.Err() == nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the proxy at %s was not ready in time (last answer: %s)", url, last)
		case <-time.After(interval):
		}
	}
}
