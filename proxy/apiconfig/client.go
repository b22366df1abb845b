package apiconfig

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// client is a minimal Kubernetes API client for ConfigMaps of one namespace: list and watch one object by name,
// authenticated with a bearer token file re-read for every request (the kubelet rotates it) and verified against a
// CA file re-read when a connection fails verification.
type client struct {
	host      string // "https://host:port"
	namespace string
	tokenFile string
	caFile    string

	mu    sync.Mutex
	hc    *http.Client
	caPEM []byte
}

func newClient(host, namespace, tokenFile, caFile string) (*client, error) {
	c := &client{host: strings.TrimSuffix(host, "/"), namespace: namespace, tokenFile: tokenFile, caFile: caFile}
	if err := c.reloadCA(); err != nil {
		return nil, err
	}
	return c, nil
}

// reloadCA rebuilds the transport when the CA file's content changed (or on first use).
func (c *client) reloadCA() error {
	pem, err := os.ReadFile(c.caFile)
	if err != nil {
		return fmt.Errorf("reading the API server's CA: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hc != nil && bytes.Equal(pem, c.caPEM) {
		return nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s holds no PEM certificate", c.caFile)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2:   true, // every watch shares one connection
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     90 * time.Second,
		HTTP2: &http.HTTP2Config{
			// A connection that went silent (a vanished API server, a dropped NAT entry) is noticed within a minute.
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     15 * time.Second,
		},
	}
	if c.hc != nil {
		c.hc.CloseIdleConnections()
	}
	c.hc, c.caPEM = &http.Client{Transport: tr}, pem
	return nil
}

func (c *client) httpClient() *http.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hc
}

// close releases idle connections.
func (c *client) close() { c.httpClient().CloseIdleConnections() }

// APIError is an API server's refusal: its HTTP status and, when it sent one, its Status object's reason and
// message.
type APIError struct {
	// Code is the HTTP status (403 Forbidden, 410 Gone, ...).
	Code int
	// Reason is the Status reason, such as "Forbidden" or "Expired".
	Reason string
	// Message is the API server's explanation.
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("API server answered %d %s: %s", e.Code, e.Reason, e.Message)
}

// isGone reports whether err says the resource version is too old (410 Gone / Expired): the caller must list again.
func isGone(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == http.StatusGone
}

type objectMeta struct {
	Name            string            `json:"name"`
	ResourceVersion string            `json:"resourceVersion"`
	Annotations     map[string]string `json:"annotations"`
}

// configMap holds the fields of a ConfigMap the proxy reads.
type configMap struct {
	Metadata objectMeta        `json:"metadata"`
	Data     map[string]string `json:"data"`
}

type configMapList struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Items []configMap `json:"items"`
}

type status struct {
	Kind    string `json:"kind"`
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

type watchEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

// request sends a GET for the namespace's ConfigMaps with query and returns the response when its status is 200.
func (c *client) request(ctx context.Context, query url.Values) (*http.Response, error) {
	token, err := os.ReadFile(c.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("reading the ServiceAccount token: %w", err)
	}
	u := c.host + "/api/v1/namespaces/" + url.PathEscape(c.namespace) + "/configmaps?" + query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "trellis-proxy")
	resp, err := c.httpClient().Do(req)
	if err != nil {
		var unknown x509.UnknownAuthorityError
		if errors.As(err, &unknown) {
			_ = c.reloadCA() // the API server's CA may have rotated; the next attempt uses the file's
		}
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	ae := &APIError{Code: resp.StatusCode, Reason: http.StatusText(resp.StatusCode), Message: strings.TrimSpace(string(body))}
	var st status
	if json.Unmarshal(body, &st) == nil && st.Kind == "Status" {
		ae.Reason, ae.Message = st.Reason, st.Message
	}
	return nil, ae
}

func nameSelector(name string) string { return "metadata.name=" + name }

// get lists the ConfigMap named name (nil when it does not exist) and returns the list's resource version.
func (c *client) get(ctx context.Context, name string) (*configMap, string, error) {
	resp, err := c.request(ctx, url.Values{"fieldSelector": {nameSelector(name)}})
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	var list configMapList
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxObjectBytes)).Decode(&list); err != nil {
		return nil, "", fmt.Errorf("decoding the list of %s: %w", name, err)
	}
	for i := range list.Items {
		if list.Items[i].Metadata.Name == name {
			return &list.Items[i], list.Metadata.ResourceVersion, nil
		}
	}
	return nil, list.Metadata.ResourceVersion, nil
}

// maxObjectBytes bounds what one list or watch event may hold: a ConfigMap is at most 1 MiB, plus JSON escaping.
const maxObjectBytes = 8 << 20

// watch opens a watch of the ConfigMap named name from resource version rv, with bookmarks, ending server-side after
// timeout. next returns events until the stream ends (io.EOF) or fails.
func (c *client) watch(ctx context.Context, name, rv string, timeout time.Duration) (next func() (watchEvent, error),
	stop func(), err error) {
	resp, err := c.request(ctx, url.Values{ //nolint:bodyclose // closed by stop
		"fieldSelector":       {nameSelector(name)},
		"watch":               {"true"},
		"resourceVersion":     {rv},
		"allowWatchBookmarks": {"true"},
		"timeoutSeconds":      {fmt.Sprint(int(timeout.Seconds()))},
	})
	if err != nil {
		return nil, nil, err
	}
	dec := json.NewDecoder(resp.Body)
	next = func() (watchEvent, error) {
		var ev watchEvent
		if err := dec.Decode(&ev); err != nil {
			return ev, err
		}
		return ev, nil
	}
	return next, func() { resp.Body.Close() }, nil
}

// eventStatus decodes the Status of an ERROR event into an APIError.
func eventStatus(raw json.RawMessage) error {
	var st status
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("undecodable watch error: %w", err)
	}
	return &APIError{Code: st.Code, Reason: st.Reason, Message: st.Message}
}
