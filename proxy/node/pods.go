package node

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// Pod is what the node proxy knows of a pod it may serve.
type Pod struct {
	// Namespace, Name and UID identify the pod; a pod recreated under the same name has another UID.
	Namespace, Name, UID string
	// ServiceAccount is spec.serviceAccountName; the pod's identity is its SPIFFE ID.
	ServiceAccount string
	// NodeName is spec.nodeName.
	NodeName string
	// IPs are status.podIPs (the first is status.podIP); empty until the sandbox has its network.
	IPs []netip.Addr
	// Labels match the workload selectors of the proxy configuration; Annotations carry what the injector wrote.
	Labels, Annotations map[string]string
	// Phase is status.phase: Pending, Running, Succeeded, Failed or Unknown.
	Phase string
	// Deleting is true once metadata.deletionTimestamp is set (the pod still runs during its grace period).
	Deleting bool
}

// Key returns "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// Serve reports whether the node proxy should serve p: a pod injected for the node proxy, on node, with an
// address, not finished. The reason says why not.
func (p *Pod) Serve(node string) (bool, string) {
	switch {
	case p.NodeName != node:
		return false, fmt.Sprintf("scheduled on node %q, not %q", p.NodeName, node)
	case p.Labels[wellknown.LabelProxy] != wellknown.ProxyNode:
		return false, fmt.Sprintf("not labelled %s=%s", wellknown.LabelProxy, wellknown.ProxyNode)
	case p.Annotations[wellknown.AnnotationInjected] == "":
		return false, "not injected"
	case p.Phase == "Succeeded" || p.Phase == "Failed":
		return false, "finished (" + p.Phase + ")"
	case len(p.IPs) == 0:
		return false, "no pod IP yet"
	}
	return true, ""
}

// Source delivers the pods of the node.
type Source interface {
	// Run calls update with the complete set of pods every time it changes, until ctx ends. The first call means
	// the source is synced.
	Run(ctx context.Context, update func([]Pod))
}

// APISource lists and watches the node's meshed pods through the Kubernetes API (field selector spec.nodeName,
// label selector mesh.trellis.io/proxy=node) with the node proxy's ServiceAccount token. It is a small client on
// net/http and encoding/json, like the proxy's configuration source.
type APISource struct {
	// Host is the API server's URL ("https://10.96.0.1:443"). Required.
	Host string
	// TokenFile is the bearer token, re-read for every request. Required.
	TokenFile string
	// CAFile verifies the API server. Required.
	CAFile string
	// NodeName selects the pods. Required.
	NodeName string
	// Log receives failures and recoveries. Default slog.Default().
	Log *slog.Logger
	// MinBackoff and MaxBackoff bound the wait after a failure. Defaults 200ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// WatchTimeout is how long one watch stays open before it is renewed. Default 5m.
	WatchTimeout time.Duration

	once   sync.Once
	client *http.Client
	err    error
}

var _ Source = (*APISource)(nil)

// apiPod holds the fields of a Pod the node proxy reads.
type apiPod struct {
	Metadata struct {
		Name              string            `json:"name"`
		Namespace         string            `json:"namespace"`
		UID               string            `json:"uid"`
		ResourceVersion   string            `json:"resourceVersion"`
		Labels            map[string]string `json:"labels"`
		Annotations       map[string]string `json:"annotations"`
		DeletionTimestamp *string           `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		NodeName           string `json:"nodeName"`
		ServiceAccountName string `json:"serviceAccountName"`
	} `json:"spec"`
	Status struct {
		Phase  string `json:"phase"`
		PodIP  string `json:"podIP"`
		PodIPs []struct {
			IP string `json:"ip"`
		} `json:"podIPs"`
	} `json:"status"`
}

func (a *apiPod) pod() Pod {
	p := Pod{Namespace: a.Metadata.Namespace, Name: a.Metadata.Name, UID: a.Metadata.UID,
		ServiceAccount: a.Spec.ServiceAccountName, NodeName: a.Spec.NodeName, Labels: a.Metadata.Labels,
		Annotations: a.Metadata.Annotations, Phase: a.Status.Phase, Deleting: a.Metadata.DeletionTimestamp != nil}
	if p.ServiceAccount == "" {
		p.ServiceAccount = "default"
	}
	ips := []string{a.Status.PodIP}
	for _, ip := range a.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil && !slices.Contains(p.IPs, ip.Unmap()) {
			p.IPs = append(p.IPs, ip.Unmap())
		}
	}
	return p
}

type podList struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Items []apiPod `json:"items"`
}

type watchEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

// apiError is an API server's refusal.
type apiError struct {
	code    int
	message string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("API server answered %d: %s", e.code, e.message)
}

// Run lists and watches the pods until ctx ends.
func (s *APISource) Run(ctx context.Context, update func([]Pod)) {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	minB, maxB := s.MinBackoff, s.MaxBackoff
	if minB <= 0 {
		minB = 200 * time.Millisecond
	}
	if maxB < minB {
		maxB = max(30*time.Second, minB)
	}
	pods := map[string]Pod{}
	publish := func() {
		out := slices.Collect(maps.Values(pods))
		slices.SortFunc(out, func(a, b Pod) int { return strings.Compare(a.Key(), b.Key()) })
		update(out)
	}
	var backoff time.Duration
	failed := false
	rv := ""
	for ctx.Err() == nil {
		var err error
		if rv == "" {
			var list map[string]Pod
			if list, rv, err = s.list(ctx); err == nil {
				pods = list
				publish()
				if failed {
					log.Info("Pod watch recovered", "node", s.NodeName)
					failed = false
				}
				backoff = 0
			}
		}
		if err == nil {
			err = s.watch(ctx, &rv, pods, publish)
		}
		var ae *apiError
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, io.EOF):
			continue // the API server ended the watch: renew it from the last version seen
		case errors.As(err, &ae) && ae.code == http.StatusGone:
			log.Info("Pod watch expired; listing again", "resourceVersion", rv)
			rv = ""
			continue
		}
		rv = ""
		if !failed {
			log.Warn("Pod watch failed; retrying", "node", s.NodeName, "error", err)
			failed = true
		}
		backoff = min(max(2*backoff, minB), maxB)
		t := time.NewTimer(time.Duration(float64(backoff) * (0.5 + rand.Float64()/2)))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (s *APISource) query() url.Values {
	return url.Values{
		"fieldSelector": {"spec.nodeName=" + s.NodeName},
		"labelSelector": {wellknown.LabelProxy + "=" + wellknown.ProxyNode},
	}
}

func (s *APISource) list(ctx context.Context) (map[string]Pod, string, error) {
	resp, err := s.get(ctx, s.query())
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	var l podList
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		return nil, "", fmt.Errorf("decoding the pod list: %w", err)
	}
	pods := make(map[string]Pod, len(l.Items))
	for i := range l.Items {
		p := l.Items[i].pod()
		pods[p.UID] = p
	}
	return pods, l.Metadata.ResourceVersion, nil
}

func (s *APISource) watch(ctx context.Context, rv *string, pods map[string]Pod, publish func()) error {
	timeout := s.WatchTimeout
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	q := s.query()
	q.Set("watch", "true")
	q.Set("resourceVersion", *rv)
	q.Set("allowWatchBookmarks", "true")
	q.Set("timeoutSeconds", fmt.Sprint(int(timeout.Seconds())))
	resp, err := s.get(ctx, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev watchEvent
		if err := dec.Decode(&ev); err != nil {
			return err
		}
		switch ev.Type {
		case "ADDED", "MODIFIED", "DELETED":
			var a apiPod
			if err := json.Unmarshal(ev.Object, &a); err != nil {
				return fmt.Errorf("decoding a %s event: %w", ev.Type, err)
			}
			*rv = a.Metadata.ResourceVersion
			p := a.pod()
			if ev.Type == "DELETED" {
				delete(pods, p.UID)
			} else {
				pods[p.UID] = p
			}
			publish()
		case "BOOKMARK":
			var a apiPod
			if json.Unmarshal(ev.Object, &a) == nil && a.Metadata.ResourceVersion != "" {
				*rv = a.Metadata.ResourceVersion
			}
		case "ERROR":
			var st struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			_ = json.Unmarshal(ev.Object, &st)
			return &apiError{code: st.Code, message: st.Message}
		}
	}
}

// get sends a GET for pods with query and returns the response when its status is 200.
func (s *APISource) get(ctx context.Context, query url.Values) (*http.Response, error) {
	s.once.Do(func() { s.client, s.err = apiClient(s.CAFile) })
	if s.err != nil {
		return nil, s.err
	}
	token, err := os.ReadFile(s.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("reading the ServiceAccount token: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		strings.TrimSuffix(s.Host, "/")+"/api/v1/pods?"+query.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+string(bytes.TrimSpace(token)))
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "trellis-node-proxy")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	ae := &apiError{code: resp.StatusCode, message: strings.TrimSpace(string(body))}
	var st struct {
		Kind, Message string
	}
	if json.Unmarshal(body, &st) == nil && st.Kind == "Status" {
		ae.message = st.Message
	}
	return nil, ae
}

func apiClient(caFile string) (*http.Client, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading the API server's CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		HTTP2:               &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second},
	}}, nil
}
