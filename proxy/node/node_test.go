package node

import (
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/trellis-mesh/trellis/internal/wellknown"
)

func mustParseCert(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// metricSum adds the values of the series of metric whose labels include every wanted label.
func metricSum(text, metric string, want map[string]string) float64 {
	total := 0.0
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		labels, value, ok := strings.Cut(line[len(metric):], "} ")
		if !ok {
			continue
		}
		match := true
		for k, v := range want {
			match = match && strings.Contains(labels, fmt.Sprintf(`%s=%q`, k, v))
		}
		if match {
			var f float64
			_, _ = fmt.Sscan(value, &f)
			total += f
		}
	}
	return total
}

func TestPodServe(t *testing.T) {
	base := servedPod("shop", "web-1", "web", "10.244.0.7", nil)
	for _, tc := range []struct {
		name   string
		change func(*Pod)
		want   string // "" when served
	}{
		{"served", func(*Pod) {}, ""},
		{"initializing (Pending) is served", func(p *Pod) { p.Phase = "Pending" }, ""},
		{"terminating is still served", func(p *Pod) { p.Deleting = true }, ""},
		{"another node", func(p *Pod) { p.NodeName = "node-2" }, `scheduled on node "node-2", not "node-1"`},
		{"a sidecar pod", func(p *Pod) { p.Labels = map[string]string{wellknown.LabelProxy: wellknown.ProxySidecar} }, "not labelled mesh.trellis.io/proxy=node"},
		{"labelled but not injected", func(p *Pod) { p.Annotations = nil }, "not injected"},
		{"a finished Job pod", func(p *Pod) { p.Phase = "Succeeded" }, "finished (Succeeded)"},
		{"failed", func(p *Pod) { p.Phase = "Failed" }, "finished (Failed)"},
		{"no address yet", func(p *Pod) { p.IPs = nil }, "no pod IP yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base
			p.Labels = map[string]string{wellknown.LabelProxy: wellknown.ProxyNode}
			p.Annotations = map[string]string{wellknown.AnnotationInjected: "default"}
			tc.change(&p)
			ok, why := p.Serve(helperNode)
			if ok != (tc.want == "") || why != tc.want {
				t.Fatalf("Serve = %v %q, want %q", ok, why, tc.want)
			}
		})
	}
}

func TestGathererLabelsPodSeries(t *testing.T) {
	node := prometheus.NewRegistry()
	node.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "node_gauge"}))
	pod := func(v float64) *prometheus.Registry {
		r := prometheus.NewRegistry()
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "request_total", Help: "h"}, []string{"direction"})
		c.WithLabelValues("inbound").Add(v)
		r.MustRegister(c, prometheus.NewGauge(prometheus.GaugeOpts{Name: "go_goroutines", Help: "runtime"}))
		return r
	}
	g := newGatherer(node)
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	g.add("uid-1", pod(3), map[string]string{LabelWorkloadNamespace: "shop", LabelWorkloadPod: "web-1"})
	g.add("uid-2", pod(5), map[string]string{LabelWorkloadNamespace: "shop", LabelWorkloadPod: "web-2"})
	text := gatherText(t, g)
	for _, want := range []string{
		`request_total{direction="inbound",workload_namespace="shop",workload_pod="web-1"} 3`,
		`request_total{direction="inbound",workload_namespace="shop",workload_pod="web-2"} 5`,
		"node_gauge 0",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %s in\n%s", want, text)
		}
	}
	if strings.Contains(text, "go_goroutines") {
		t.Errorf("the pods' runtime series are served:\n%s", text)
	}
	// A pod that left stays exported for DefaultRetain, so that a last scrape sees its final counts.
	g.remove("uid-1")
	if text := gatherText(t, g); !strings.Contains(text, "web-1") {
		t.Errorf("a pod that just left is no longer served:\n%s", text)
	}
	now = now.Add(DefaultRetain)
	if text := gatherText(t, g); strings.Contains(text, "web-1") || !strings.Contains(text, "web-2") {
		t.Errorf("after the retention, the departed pod's series are still served (or the other's are not):\n%s", text)
	}
	// A pod served again under the same key before the retention ends keeps its new series.
	g.remove("uid-2")
	g.add("uid-2", pod(7), map[string]string{LabelWorkloadNamespace: "shop", LabelWorkloadPod: "web-2"})
	now = now.Add(DefaultRetain)
	if text := gatherText(t, g); !strings.Contains(text, `workload_pod="web-2"} 7`) {
		t.Errorf("a pod served again lost its series:\n%s", text)
	}
}

func gatherText(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			var labels []string
			for _, l := range m.Label {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			if len(labels) == 0 {
				fmt.Fprintf(&b, "%s %v\n", mf.GetName(), v)
			} else {
				fmt.Fprintf(&b, "%s{%s} %v\n", mf.GetName(), strings.Join(labels, ","), v)
			}
		}
	}
	return b.String()
}
