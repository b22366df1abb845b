package node

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Labels the node proxy adds to the series of each pod it serves and of each identity it holds.
const (
	// LabelWorkloadNamespace and LabelWorkloadPod name the pod a series belongs to. They are not "namespace" and
	// "pod", which Prometheus' Kubernetes discovery sets to the node proxy's own pod.
	LabelWorkloadNamespace = "workload_namespace"
	LabelWorkloadPod       = "workload_pod"
	// LabelWorkloadIdentity is the SPIFFE ID of a certificate's series (identity_cert_*).
	LabelWorkloadIdentity = "workload_identity"
)

// DefaultRetain is how long the series of a pod that left stay exported, so that the next scrape sees their final
// values (a Job's pod often finishes between two scrapes).
const DefaultRetain = 2 * time.Minute

// gatherer serves the node proxy's own registry and, with their labels added, the registries of the pods and
// identities it holds. Runtime and process collectors of those registries are left out: the node's registry has them.
type gatherer struct {
	node   prometheus.Gatherer
	retain time.Duration
	now    func() time.Time

	mu    sync.Mutex
	parts map[string]part // by key (the pod's UID or the identity)
}

type part struct {
	g       prometheus.Gatherer
	labels  []*dto.LabelPair
	expires time.Time // zero while the pod or identity is held
}

var _ prometheus.Gatherer = (*gatherer)(nil)

func newGatherer(node prometheus.Gatherer) *gatherer {
	return &gatherer{node: node, retain: DefaultRetain, now: time.Now, parts: map[string]part{}}
}

// add serves g's series with labels added, until remove(key).
func (g *gatherer) add(key string, reg prometheus.Gatherer, labels map[string]string) {
	p := part{g: reg}
	for k, v := range labels {
		p.labels = append(p.labels, &dto.LabelPair{Name: &k, Value: &v})
	}
	g.mu.Lock()
	g.parts[key] = p
	g.mu.Unlock()
}

// remove stops serving key's series after the retention time (at once when retain is 0 or less); an add of the
// same key meanwhile keeps the new registry.
func (g *gatherer) remove(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p, ok := g.parts[key]
	if !ok {
		return
	}
	if g.retain <= 0 {
		delete(g.parts, key)
		return
	}
	p.expires = g.now().Add(g.retain)
	g.parts[key] = p
}

// Gather implements prometheus.Gatherer.
func (g *gatherer) Gather() ([]*dto.MetricFamily, error) {
	g.mu.Lock()
	now := g.now()
	parts := make([]part, 0, len(g.parts))
	for k, p := range g.parts {
		if !p.expires.IsZero() && !now.Before(p.expires) {
			delete(g.parts, k)
			continue
		}
		parts = append(parts, p)
	}
	g.mu.Unlock()
	gs := prometheus.Gatherers{g.node}
	for _, p := range parts {
		gs = append(gs, labelled(p))
	}
	return gs.Gather()
}

// labelled returns a Gatherer of p's families without the runtime and process ones, with p's labels on every
// series.
func labelled(p part) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		mfs, err := p.g.Gather()
		out := mfs[:0]
		for _, mf := range mfs {
			name := mf.GetName()
			if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
				continue
			}
			for _, m := range mf.Metric {
				m.Label = append(m.Label, p.labels...)
				slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
			}
			out = append(out, mf)
		}
		return out, err
	})
}
