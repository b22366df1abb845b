package metrics

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRouteSeries(t *testing.T) {
	m := New()
	l := HTTPLabels{Direction: Outbound, Authority: "web.shop.svc.cluster.local:80", TLS: "false",
		DstNamespace: "shop", DstService: "web", Route: "api"}
	r := m.Route(l)
	if m.Route(l) != r {
		t.Fatal("label set not cached")
	}
	r.Request()
	r.Response(200, false, 3*time.Millisecond)
	r.Response(503, true, 70*time.Millisecond)
	r.Response(42, true, time.Millisecond) // out of range: recorded as 0
	got := series(t, m, "response_total")
	for _, want := range []string{
		"classification=failure,status_code=0 1", "classification=success,status_code=200 1",
		"classification=failure,status_code=503 1", "classification=success,status_code=503 0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("response_total lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(series(t, m, "response_latency_ms"), "\n"); n != 3 {
		t.Errorf("%d latency series, want 3", n)
	}
}

// series renders the series of one family as "classification=…,status_code=… value" lines.
func series(t *testing.T, m *Metrics, name string) string {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, s := range mf.GetMetric() {
			var parts []string
			for _, lp := range s.GetLabel() {
				if lp.GetName() == "classification" || lp.GetName() == "status_code" {
					parts = append(parts, lp.GetName()+"="+lp.GetValue())
				}
			}
			v := s.GetCounter().GetValue()
			if s.Histogram != nil {
				v = float64(s.Histogram.GetSampleCount())
			}
			fmt.Fprintf(&b, "%s %v\n", strings.Join(parts, ","), v)
		}
	}
	return b.String()
}

func TestTCPAndErrno(t *testing.T) {
	m := New()
	c := m.TCP(TCPLabels{Direction: Inbound, TLS: "false"})
	c.Open()
	c.Open()
	c.Close(nil)
	c.Close(fmt.Errorf("read: %w", syscall.ECONNRESET))
	if got := series(t, m, "tcp_close_total"); !strings.Contains(got, " 1\n") {
		t.Errorf("tcp_close_total: %s", got)
	}
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""}, {syscall.EPIPE, "EPIPE"}, {os.ErrDeadlineExceeded, "ETIMEDOUT"}, {errors.New("x"), "EOTHER"},
		{syscall.EACCES, "EOTHER"},
	}
	for _, tt := range tests {
		if got := Errno(tt.err); got != tt.want {
			t.Errorf("Errno(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// BenchmarkRecord measures what the request path pays for metrics: one request and one response.
func BenchmarkRecord(b *testing.B) {
	r := New().Route(HTTPLabels{Direction: Outbound, Authority: "a:80", TLS: "false", DstService: "a"})
	b.ReportAllocs()
	for b.Loop() {
		r.Request()
		r.Response(200, false, 2*time.Millisecond)
	}
}
