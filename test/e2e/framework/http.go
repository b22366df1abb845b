package framework

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// HTTPGet fetches a URL from the host. Pod IPs, ClusterIPs and the node's address are routed to the node, so
// http://<clusterIP>:<port>/ works directly.
func HTTPGet(ctx context.Context, u string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Sample is one series of an instant Prometheus query.
type Sample struct {
	Labels map[string]string
	Value  float64
}

// PromQuery runs an instant query against the test ground's Prometheus (which scrapes every pod annotated with
// prometheus.io/scrape: "true", prometheus.io/port and optionally prometheus.io/path, every 5 s).
func PromQuery(ctx context.Context, query string) ([]Sample, error) {
	code, body, err := HTTPGet(ctx, PrometheusURL+"/api/v1/query?query="+url.QueryEscape(query))
	if err != nil {
		return nil, err
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("prometheus answered %d: %s", code, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("prometheus query %q: %s", query, r.Error)
	}
	out := make([]Sample, 0, len(r.Data.Result))
	for _, s := range r.Data.Result {
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("prometheus value %v: %w", s.Value[1], err)
		}
		out = append(out, Sample{Labels: s.Metric, Value: v})
	}
	return out, nil
}
