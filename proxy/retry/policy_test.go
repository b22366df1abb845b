package retry_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/proxy/retry"
)

func TestBackoff(t *testing.T) {
	ms := time.Millisecond
	ceilings := []time.Duration{25 * ms, 50 * ms, 100 * ms, 200 * ms, 250 * ms, 250 * ms}
	var zero retry.Backoff
	for n, want := range ceilings {
		if got := zero.Ceiling(n); got != want {
			t.Errorf("ceiling %d = %v, want %v", n, got, want)
		}
	}
	if got := zero.Ceiling(1000); got != 250*ms {
		t.Errorf("ceiling 1000 = %v", got)
	}
	top := retry.Backoff{Int64N: func(n int64) int64 { return n - 1 }}
	bottom := retry.Backoff{Int64N: func(int64) int64 { return 0 }}
	for n, want := range ceilings {
		if got := top.Delay(n); got != want {
			t.Errorf("highest delay %d = %v, want %v", n, got, want)
		}
		if got := bottom.Delay(n); got != 0 {
			t.Errorf("lowest delay %d = %v, want 0 (full jitter)", n, got)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	jit := retry.Backoff{Base: 10 * ms, Max: time.Second, Int64N: r.Int64N}
	for n := range 10 {
		var sum time.Duration
		for range 2000 {
			d := jit.Delay(n)
			if d < 0 || d > jit.Ceiling(n) {
				t.Fatalf("delay %d = %v outside [0, %v]", n, d, jit.Ceiling(n))
			}
			sum += d
		}
		if mean, half := sum/2000, jit.Ceiling(n)/2; mean < half*9/10 || mean > half*11/10 {
			t.Errorf("mean delay %d = %v, want about %v", n, mean, half)
		}
	}
	if got := (retry.Backoff{Base: time.Second, Max: time.Millisecond}).Ceiling(0); got != time.Second {
		t.Errorf("max below base: ceiling %v", got)
	}
}

func TestIdempotent(t *testing.T) {
	for _, m := range []string{"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"} {
		if !retry.Idempotent(m) {
			t.Errorf("%s not idempotent", m)
		}
	}
	for _, m := range []string{"POST", "PATCH", "CONNECT", "get", "", "PROPFIND"} {
		if retry.Idempotent(m) {
			t.Errorf("%q idempotent", m)
		}
	}
}

func TestPolicy(t *testing.T) {
	var (
		connect = retry.Outcome{ConnectFailure: true}
		refused = retry.Outcome{RefusedStream: true}
		reset   = retry.Outcome{Reset: true}
		timeout = retry.Outcome{Timeout: true}
	)
	status := func(s int) retry.Outcome { return retry.Outcome{Status: s} }
	grpc := func(c int) retry.Outcome { return retry.Outcome{Status: 200, GRPCStatus: c} }
	tests := []struct {
		name    string
		retryOn []string
		nonIdem bool
		method  string
		o       retry.Outcome
		want    bool
	}{
		{"connect failure, empty list", nil, false, "GET", connect, true},
		{"connect failure, POST", []string{"connect-failure"}, false, "POST", connect, true},
		{"connect failure, not listed", []string{"5xx"}, false, "PATCH", connect, true},
		{"refused stream, POST", nil, false, "POST", refused, true},
		{"success", []string{"5xx", "reset", "gateway-error"}, false, "GET", status(200), false},
		{"no outcome", []string{"5xx", "reset"}, false, "GET", retry.Outcome{}, false},
		{"5xx 500", []string{"5xx"}, false, "GET", status(500), true},
		{"5xx 599", []string{"5xx"}, false, "PUT", status(599), true},
		{"5xx not 499", []string{"5xx"}, false, "GET", status(499), false},
		{"5xx POST", []string{"5xx"}, false, "POST", status(503), false},
		{"5xx POST allowed", []string{"5xx"}, true, "POST", status(503), true},
		{"5xx PATCH allowed", []string{"5xx"}, true, "PATCH", status(500), true},
		{"5xx is not reset", []string{"5xx"}, false, "GET", reset, false},
		{"gateway 502", []string{"gateway-error"}, false, "GET", status(502), true},
		{"gateway 503", []string{"gateway-error"}, false, "HEAD", status(503), true},
		{"gateway 504", []string{"gateway-error"}, false, "DELETE", status(504), true},
		{"gateway not 500", []string{"gateway-error"}, false, "GET", status(500), false},
		{"gateway not 505", []string{"gateway-error"}, false, "GET", status(505), false},
		{"reset GET", []string{"reset"}, false, "GET", reset, true},
		{"reset POST", []string{"reset"}, false, "POST", reset, false},
		{"reset not listed", []string{"5xx"}, false, "GET", reset, false},
		{"code 503", []string{"503"}, false, "GET", status(503), true},
		{"code 503 not 502", []string{"503"}, false, "GET", status(502), false},
		{"code 429", []string{"429"}, false, "OPTIONS", status(429), true},
		{"code 100 and 599", []string{"100", "599"}, false, "GET", status(599), true},
		{"code out of range", []string{"5xx"}, false, "GET", status(600), false},
		{"grpc unavailable", []string{"unavailable"}, false, "POST", grpc(14), true},
		{"grpc cancelled", []string{"cancelled"}, false, "POST", grpc(1), true},
		{"grpc deadline", []string{"deadline-exceeded"}, false, "POST", grpc(4), true},
		{"grpc exhausted", []string{"resource-exhausted"}, false, "POST", grpc(8), true},
		{"grpc internal", []string{"internal"}, false, "POST", grpc(13), true},
		{"grpc other code", []string{"unavailable", "internal"}, false, "POST", grpc(2), false},
		{"grpc ok", []string{"unavailable"}, false, "POST", grpc(0), false},
		{"grpc not listed", []string{"5xx"}, false, "POST", grpc(14), false},
		{"grpc out of range", []string{"unavailable"}, false, "POST", grpc(99), false},
		{"timeout under reset", []string{"reset"}, false, "GET", timeout, true},
		{"timeout under 5xx", []string{"5xx"}, false, "GET", timeout, true},
		{"timeout under gateway-error", []string{"gateway-error"}, false, "GET", timeout, true},
		{"timeout not listed", []string{"503"}, false, "GET", timeout, false},
		{"timeout POST", []string{"5xx"}, false, "POST", timeout, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := retry.NewPolicy(tt.retryOn, retry.PolicyOptions{RetryNonIdempotent: tt.nonIdem})
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Retryable(tt.method, tt.o); got != tt.want {
				t.Fatalf("Retryable(%s, %+v) = %v, want %v", tt.method, tt.o, got, tt.want)
			}
		})
	}
}

func TestPolicyRejects(t *testing.T) {
	for _, on := range []string{"", "5XX", "retriable-4xx", "99", "600", "0503", "+503", "50", "UNAVAILABLE", "ok"} {
		if _, err := retry.NewPolicy([]string{"5xx", on}, retry.PolicyOptions{}); err == nil {
			t.Errorf("%q accepted", on)
		}
	}
	// Every value internal/proxyconfig accepts is understood.
	if _, err := retry.NewPolicy([]string{"connect-failure", "refused-stream", "5xx", "gateway-error", "reset", "503",
		"100", "cancelled", "deadline-exceeded", "resource-exhausted", "internal", "unavailable"},
		retry.PolicyOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestOutcomeFailure(t *testing.T) {
	tests := []struct {
		o    retry.Outcome
		want bool
	}{
		{retry.Outcome{}, false},
		{retry.Outcome{Status: 200}, false},
		{retry.Outcome{Status: 404}, false},
		{retry.Outcome{Status: 500}, true},
		{retry.Outcome{Status: 503}, true},
		{retry.Outcome{ConnectFailure: true}, true},
		{retry.Outcome{RefusedStream: true}, true},
		{retry.Outcome{Reset: true}, true},
		{retry.Outcome{Timeout: true}, true},
		{retry.Outcome{Status: 200, GRPCStatus: 5}, false}, // NOT_FOUND: the server answered
		{retry.Outcome{Status: 200, GRPCStatus: 7}, false}, // PERMISSION_DENIED
		{retry.Outcome{Status: 200, GRPCStatus: 8}, false}, // RESOURCE_EXHAUSTED maps to 429
		{retry.Outcome{Status: 200, GRPCStatus: 2}, true},  // UNKNOWN
		{retry.Outcome{Status: 200, GRPCStatus: 4}, true},  // DEADLINE_EXCEEDED
		{retry.Outcome{Status: 200, GRPCStatus: 12}, true}, // UNIMPLEMENTED
		{retry.Outcome{Status: 200, GRPCStatus: 13}, true}, // INTERNAL
		{retry.Outcome{Status: 200, GRPCStatus: 14}, true}, // UNAVAILABLE
		{retry.Outcome{Status: 200, GRPCStatus: 15}, true}, // DATA_LOSS
	}
	for _, tt := range tests {
		if got := tt.o.Failure(); got != tt.want {
			t.Errorf("%+v.Failure() = %v, want %v", tt.o, got, tt.want)
		}
	}
}

func BenchmarkRetryable(b *testing.B) {
	p, err := retry.NewPolicy([]string{"gateway-error", "reset", "429", "unavailable"}, retry.PolicyOptions{})
	if err != nil {
		b.Fatal(err)
	}
	o := retry.Outcome{Status: 503}
	b.ReportAllocs()
	for b.Loop() {
		if !p.Retryable("GET", o) {
			b.Fatal("not retryable")
		}
	}
}
