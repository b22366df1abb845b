package headers

import (
	"net/http"
	"reflect"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestApply(t *testing.T) {
	tests := []struct {
		name             string
		set, add         []Field
		remove           []string
		in, want         http.Header
		dropped, notDrop []string
	}{
		{name: "nothing", in: http.Header{"A": {"1"}}, want: http.Header{"A": {"1"}}},
		{
			name: "set replaces every value", set: []Field{{"x-env", "prod"}},
			in: http.Header{"X-Env": {"dev", "test"}}, want: http.Header{"X-Env": {"prod"}},
			dropped: []string{"x-env", "X-ENV"},
		},
		{
			name: "add appends", add: []Field{{"x-trace", "proxy"}},
			in: http.Header{"X-Trace": {"app"}}, want: http.Header{"X-Trace": {"app", "proxy"}},
			notDrop: []string{"x-trace"},
		},
		{
			name: "remove", remove: []string{"X-Debug", "server"},
			in: http.Header{"X-Debug": {"1"}, "Server": {"go"}, "Keep": {"k"}}, want: http.Header{"Keep": {"k"}},
			dropped: []string{"x-debug", "Server"}, notDrop: []string{"keep", "x-debu"},
		},
		{
			name:   "remove, then set, then add",
			remove: []string{"a"}, set: []Field{{"a", "set"}, {"b", "set"}}, add: []Field{{"a", "added"}, {"c", "new"}},
			in:   http.Header{"A": {"old"}, "B": {"old"}},
			want: http.Header{"A": {"set", "added"}, "B": {"set"}, "C": {"new"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(tt.set, tt.add, tt.remove)
			m.Apply(tt.in)
			if !reflect.DeepEqual(tt.in, tt.want) {
				t.Errorf("got %v, want %v", tt.in, tt.want)
			}
			for _, n := range tt.dropped {
				if !m.Drops([]byte(n)) {
					t.Errorf("%q not dropped", n)
				}
			}
			for _, n := range tt.notDrop {
				if m.Drops([]byte(n)) {
					t.Errorf("%q dropped", n)
				}
			}
		})
	}
	if New(nil, nil, nil) != nil {
		t.Error("an empty modifier is not nil")
	}
}

func BenchmarkDrops(b *testing.B) {
	m := New([]Field{{"x-route", "a"}}, nil, []string{"x-debug", "server"})
	name := []byte("User-Agent")
	b.ReportAllocs()
	for b.Loop() {
		if m.Drops(name) {
			b.Fatal("dropped")
		}
	}
}
