// Package apiconfig is the proxy's fast configuration source: it watches the namespace's proxy configuration
// ConfigMaps through the Kubernetes API with the pod's ServiceAccount token and hands every consistent set of them to
// the reload pipeline, which decodes, validates, compiles and swaps it in like the mounted volume's.
//
// The operator grants every ServiceAccount of a meshed namespace get, list and watch on exactly these ConfigMaps
// (the Role trellis-proxy-config-reader, by resourceNames). RBAC checks resourceNames on lists and watches only when
// they carry the field selector metadata.name=<name>, so the source lists and watches each name on its own: the
// ConfigMaps that exist, from trellis-proxy-config on, and the next name, to see the configuration grow. Most
// namespaces need one ConfigMap, so a proxy holds two watches, multiplexed on one HTTP/2 connection; the API
// server indexes ConfigMap watches by name. It is a small client on net/http and encoding/json: client-go would
// double the proxy's size.
package apiconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/internal/wellknown"
	"github.com/trellis-mesh/trellis/proxy/reload"
)

// The pod's standard ServiceAccount credentials.
const (
	// DefaultTokenFile is the ServiceAccount token the kubelet mounts into every container (unless
	// automountServiceAccountToken is false).
	DefaultTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	// DefaultCAFile is the API server's CA bundle mounted beside it.
	DefaultCAFile = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// AnnotationConfigHash is the annotation the operator puts on every ConfigMap of a configuration, with the
// configuration's hash: ConfigMaps with different values belong to different renderings (an update in progress).
const AnnotationConfigHash = "mesh.trellis.io/config-hash"

// Names returns the ConfigMap names a configuration may span: trellis-proxy-config, trellis-proxy-config-1, ...
func Names() []string {
	names := make([]string, 0, wellknown.MaxProxyConfigMaps)
	for i := range wellknown.MaxProxyConfigMaps {
		name := wellknown.ProxyConfigName
		if i > 0 {
			name = fmt.Sprintf("%s-%d", wellknown.ProxyConfigName, i)
		}
		names = append(names, name)
	}
	return names
}

// HostFromEnv returns the API server's URL from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT, the variables
// the kubelet sets in every container; "" when they are not set.
func HostFromEnv() string {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return ""
	}
	return "https://" + net.JoinHostPort(host, port)
}

// Available reports whether the API source can run: the API server's address is known and the token and CA files
// exist.
func Available(host, tokenFile, caFile string) error {
	if host == "" {
		return errors.New("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
	}
	for _, f := range []string{tokenFile, caFile} {
		if _, err := os.Stat(f); err != nil {
			return err
		}
	}
	return nil
}

// Options configure a Source.
type Options struct {
	// Host is the API server's URL ("https://10.96.0.1:443"). Required (see HostFromEnv).
	Host string
	// TokenFile is the bearer token, re-read for every request. Default DefaultTokenFile.
	TokenFile string
	// CAFile verifies the API server. Default DefaultCAFile.
	CAFile string
	// Namespace is the pod's namespace. Required.
	Namespace string
	// Names are the ConfigMaps of the configuration, in order. Default Names().
	Names []string
	// Pipeline receives the documents. Required.
	Pipeline *reload.Pipeline
	// Log receives connection failures and recoveries. Default slog.Default().
	Log *slog.Logger
	// Settle is how long the set of ConfigMaps must stay unchanged before it is loaded, so the ConfigMaps of one
	// rendering, written one after the other, arrive together. Default 50ms.
	Settle time.Duration
	// MinBackoff and MaxBackoff bound the wait before reconnecting after a failure (doubling, with jitter).
	// Defaults 200ms and 30s.
	MinBackoff, MaxBackoff time.Duration
	// WatchTimeout is how long the API server keeps one watch open before the source renews it. Default 5m, with up
	// to 20% jitter.
	WatchTimeout time.Duration
	// Rand returns a number in [0, 1) for jitter. Default math/rand/v2.Float64.
	Rand func() float64
}

// Source watches the configuration ConfigMaps and feeds the pipeline.
type Source struct {
	o Options
	c *client

	// startRV, when set, makes the first watch of the first name start from this resource version without listing
	// (tests: an expired version must lead to a new list).
	startRV string
}

// New returns a Source.
func New(o Options) (*Source, error) {
	if o.Host == "" || o.Namespace == "" || o.Pipeline == nil {
		return nil, errors.New("apiconfig: Host, Namespace and Pipeline are required")
	}
	if o.TokenFile == "" {
		o.TokenFile = DefaultTokenFile
	}
	if o.CAFile == "" {
		o.CAFile = DefaultCAFile
	}
	if o.Names == nil {
		o.Names = Names()
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Settle <= 0 {
		o.Settle = 50 * time.Millisecond
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 200 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(30*time.Second, o.MinBackoff)
	}
	if o.WatchTimeout <= 0 {
		o.WatchTimeout = 5 * time.Minute
	}
	if o.Rand == nil {
		o.Rand = rand.Float64
	}
	c, err := newClient(o.Host, o.Namespace, o.TokenFile, o.CAFile)
	if err != nil {
		return nil, err
	}
	return &Source{o: o, c: c}, nil
}

// update is a name watcher's news: the ConfigMap's current state after a list or an event, or a failure.
type update struct {
	index int
	cm    *configMap // nil: the ConfigMap does not exist
	err   error      // set: the watcher lost its state and is retrying
}

// nameState is what the source knows of one name.
type nameState struct {
	known  bool // listed since the watcher started and not failed since
	cm     *configMap
	cancel context.CancelFunc
	done   chan struct{}
}

// Run watches until ctx ends.
func (s *Source) Run(ctx context.Context) {
	defer s.c.close()
	updates := make(chan update)
	states := make([]nameState, len(s.o.Names))
	var wg sync.WaitGroup
	defer func() {
		for i := range states {
			s.stopWatch(&states[i])
		}
		wg.Wait()
		s.o.Pipeline.SetAPISynced(false)
	}()
	start := func(i int) {
		st := &states[i]
		if st.cancel != nil {
			return
		}
		wctx, cancel := context.WithCancel(ctx)
		st.cancel, st.done = cancel, make(chan struct{})
		done := st.done
		wg.Go(func() {
			defer close(done)
			s.watchName(wctx, i, updates)
		})
	}
	start(0)
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	synced, lastOffered := false, ""
	for {
		select {
		case <-ctx.Done():
			return
		case u := <-updates:
			st := &states[u.index]
			if st.cancel == nil {
				continue // a watcher stopped meanwhile
			}
			if u.err != nil {
				st.known = false
			} else {
				st.known, st.cm = true, u.cm
			}
			// Watch the existing ConfigMaps from the first on, and the next name.
			active := s.activeCount(states)
			for i := range states {
				if i < active {
					start(i)
				} else if states[i].cancel != nil {
					s.stopWatch(&states[i])
				}
			}
			if now := s.synced(states); now != synced {
				synced = now
				s.o.Pipeline.SetAPISynced(synced)
				if synced {
					s.o.Log.Info("Watching the configuration through the API", "namespace", s.o.Namespace,
						"watches", active)
				}
			}
			settle.Reset(s.o.Settle)
		case <-settle.C:
			if !synced {
				continue
			}
			if key := s.offer(states, lastOffered); key != "" {
				lastOffered = key
			}
		}
	}
}

func (s *Source) stopWatch(st *nameState) {
	if st.cancel == nil {
		return
	}
	st.cancel()
	// The watcher may be blocked handing over an update: Run no longer reads them, so it gives up on ctx.
	<-st.done
	*st = nameState{}
}

// activeCount returns how many names to watch: the ConfigMaps that exist from the first on, plus the next name.
func (s *Source) activeCount(states []nameState) int {
	n := 1
	for i := range states {
		if states[i].cm == nil { // a watcher that fails keeps its last state: transient failures change nothing
			break
		}
		n = i + 2
	}
	return min(n, len(states))
}

// synced reports whether every watched name has been listed and its watch has not failed since.
func (s *Source) synced(states []nameState) bool {
	watching := false
	for i := range states {
		if states[i].cancel == nil {
			continue
		}
		if !states[i].known {
			return false
		}
		watching = true
	}
	return watching
}

// offer hands the current ConfigMaps to the pipeline unless they are the set offered last (key) or belong to
// different renderings; it returns the key of what it offered, or "".
func (s *Source) offer(states []nameState, last string) string {
	var cms []*configMap
	for i := range states {
		if states[i].cancel == nil || states[i].cm == nil {
			break
		}
		cms = append(cms, states[i].cm)
	}
	if len(cms) == 0 {
		return ""
	}
	var key strings.Builder
	hashes := map[string]bool{}
	for _, cm := range cms {
		fmt.Fprintf(&key, "%s@%s,", cm.Metadata.Name, cm.Metadata.ResourceVersion)
		hashes[cm.Metadata.Annotations[AnnotationConfigHash]] = true
	}
	if key.String() == last {
		return ""
	}
	if len(hashes) > 1 {
		// The operator is writing a new rendering: wait for its other ConfigMaps.
		s.o.Log.Debug("ConfigMaps of different renderings; waiting for the rest", "configMaps", key.String())
		return ""
	}
	var docs []reload.Document
	names := make([]string, 0, len(cms))
	for _, cm := range cms {
		names = append(names, cm.Metadata.Name)
		keys := make([]string, 0, len(cm.Data))
		for k := range cm.Data {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			docs = append(docs, reload.Document{Origin: cm.Metadata.Name, Name: k, Data: []byte(cm.Data[k])})
		}
	}
	origin := "configmaps " + s.o.Namespace + "/" + strings.Join(names, ",")
	_, _ = s.o.Pipeline.Offer(reload.SourceAPI, origin, func() (*proxyconfig.Loaded, error) { // logged and counted
		return reload.LoadDocuments(docs)
	})
	return key.String()
}

// watchName keeps one name's state current: list, then watch from the list's resource version, renewing the
// watch when the API server ends it, listing again when the version expired (410 Gone), and backing off after
// failures. It reports to updates until ctx ends.
func (s *Source) watchName(ctx context.Context, index int, updates chan<- update) {
	name := s.o.Names[index]
	send := func(u update) bool {
		u.index = index
		select {
		case updates <- u:
			return true
		case <-ctx.Done():
			return false
		}
	}
	rv := ""
	if index == 0 {
		rv = s.startRV
	}
	var backoff time.Duration
	failed := false
	for ctx.Err() == nil {
		if rv == "" {
			cm, listRV, err := s.c.get(ctx, name)
			if err != nil {
				if ctx.Err() == nil {
					backoff = s.fail(ctx, name, err, backoff, &failed, send)
				}
				continue
			}
			if failed {
				failed = false
				s.o.Log.Info("Configuration watch recovered", "configMap", name)
			}
			backoff = 0
			if !send(update{cm: cm}) {
				return
			}
			rv = listRV
		}
		err := s.watchOnce(ctx, name, &rv, send)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, io.EOF):
			// The API server ended the watch (its timeout): renew it from the last version seen.
		case isGone(err):
			s.o.Log.Info("Configuration watch expired; listing again", "configMap", name, "resourceVersion", rv)
			rv = ""
		default:
			rv = ""
			backoff = s.fail(ctx, name, err, backoff, &failed, send)
		}
	}
}

// fail reports a failure, waits the backoff and returns the next one.
func (s *Source) fail(ctx context.Context, name string, err error, backoff time.Duration, failed *bool,
	send func(update) bool) time.Duration {
	if !*failed {
		*failed = true
		s.o.Log.Warn("Configuration watch failed; the mounted volume stays the fallback", "configMap", name,
			"error", err)
	} else {
		s.o.Log.Debug("Configuration watch failed again", "configMap", name, "error", err)
	}
	if !send(update{err: err}) {
		return backoff
	}
	backoff = min(max(2*backoff, s.o.MinBackoff), s.o.MaxBackoff)
	wait := time.Duration(float64(backoff) * (0.5 + s.o.Rand()/2))
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	return backoff
}

// watchOnce runs one watch from *rv, reporting changes and advancing *rv, until the stream ends.
func (s *Source) watchOnce(ctx context.Context, name string, rv *string, send func(update) bool) error {
	timeout := time.Duration(float64(s.o.WatchTimeout) * (1 + s.o.Rand()/5))
	next, stop, err := s.c.watch(ctx, name, *rv, timeout)
	if err != nil {
		return err
	}
	defer stop()
	for {
		ev, err := next()
		if err != nil {
			return err
		}
		switch ev.Type {
		case "ADDED", "MODIFIED", "DELETED":
			var cm configMap
			if err := json.Unmarshal(ev.Object, &cm); err != nil {
				return fmt.Errorf("decoding a %s event: %w", ev.Type, err)
			}
			*rv = cm.Metadata.ResourceVersion
			if cm.Metadata.Name != name {
				continue
			}
			u := update{cm: &cm}
			if ev.Type == "DELETED" {
				u.cm = nil
			}
			if !send(u) {
				return ctx.Err()
			}
		case "BOOKMARK":
			var cm configMap
			if err := json.Unmarshal(ev.Object, &cm); err == nil && cm.Metadata.ResourceVersion != "" {
				*rv = cm.Metadata.ResourceVersion
			}
		case "ERROR":
			return eventStatus(ev.Object)
		}
	}
}
