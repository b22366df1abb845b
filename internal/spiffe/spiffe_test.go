package spiffe

import (
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		td      string
		path    string
		wantErr bool
	}{
		{in: "spiffe://cluster.local/ns/default/sa/web", td: "cluster.local", path: "/ns/default/sa/web"},
		{in: "spiffe://example.org", td: "example.org"},
		{in: "spiffe://a_b-c.1/Mixed.Case-ok_1", td: "a_b-c.1", path: "/Mixed.Case-ok_1"},
		{in: "", wantErr: true},
		{in: "spiffe://", wantErr: true},
		{in: "spiffe:///path", wantErr: true},
		{in: "SPIFFE://example.org/x", wantErr: true},
		{in: "spiffe://Example.org/x", wantErr: true},
		{in: "https://example.org/x", wantErr: true},
		{in: "spiffe://example.org/", wantErr: true},
		{in: "spiffe://example.org//x", wantErr: true},
		{in: "spiffe://example.org/x/", wantErr: true},
		{in: "spiffe://example.org/./x", wantErr: true},
		{in: "spiffe://example.org/x/..", wantErr: true},
		{in: "spiffe://example.org:8443/x", wantErr: true},
		{in: "spiffe://user@example.org/x", wantErr: true},
		{in: "spiffe://example.org/x?y=1", wantErr: true},
		{in: "spiffe://example.org/x#frag", wantErr: true},
		{in: "spiffe://example.org/x%20y", wantErr: true},
		{in: "spiffe://example.org/x y", wantErr: true},
		{in: "spiffe://exa\x00mple.org/x", wantErr: true},
		{in: "spiffe://" + strings.Repeat("a", 256), wantErr: true},
		{in: "spiffe://a/" + strings.Repeat("b", MaxLength), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			id, err := Parse(tt.in)
			if tt.wantErr {
				if err == nil || !errors.Is(err, ErrInvalid) {
					t.Fatalf("Parse(%q) = %v, %v; want an ErrInvalid error", tt.in, id, err)
				}
				if !id.IsZero() {
					t.Fatalf("Parse(%q) returned non-zero ID %v with an error", tt.in, id)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if id.TrustDomain() != tt.td || id.Path() != tt.path || id.String() != tt.in {
				t.Fatalf("Parse(%q) = td %q path %q string %q", tt.in, id.TrustDomain(), id.Path(), id.String())
			}
		})
	}
}

func TestFromServiceAccount(t *testing.T) {
	tests := []struct {
		name        string
		td, ns, sa  string
		want        string
		wantErr     bool
		wantNSAndSA bool
	}{
		{name: "plain", td: "cluster.local", ns: "default", sa: "web", want: "spiffe://cluster.local/ns/default/sa/web"},
		{name: "dotted sa", td: "td", ns: "kube-system", sa: "a.b-c", want: "spiffe://td/ns/kube-system/sa/a.b-c"},
		{name: "uppercase ns", td: "td", ns: "Default", sa: "web", wantErr: true},
		{name: "empty sa", td: "td", ns: "default", sa: "", wantErr: true},
		{name: "slash in sa", td: "td", ns: "default", sa: "a/b", wantErr: true},
		{name: "ns too long", td: "td", ns: strings.Repeat("a", 64), sa: "web", wantErr: true},
		{name: "ns leading dash", td: "td", ns: "-a", sa: "web", wantErr: true},
		{name: "bad trust domain", td: "TD", ns: "default", sa: "web", wantErr: true},
		{name: "empty trust domain", td: "", ns: "default", sa: "web", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := FromServiceAccount(tt.td, tt.ns, tt.sa)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("FromServiceAccount = %v; want error", id)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.String() != tt.want {
				t.Fatalf("got %q, want %q", id, tt.want)
			}
			ns, sa, ok := id.ServiceAccount()
			if !ok || ns != tt.ns || sa != tt.sa {
				t.Fatalf("ServiceAccount() = %q %q %v", ns, sa, ok)
			}
		})
	}
}

func TestServiceAccountRejectsOtherPaths(t *testing.T) {
	for _, s := range []string{
		"spiffe://td",
		"spiffe://td/ns/default",
		"spiffe://td/ns/default/sa/web/extra",
		"spiffe://td/namespace/default/sa/web",
		"spiffe://td/ns/Default/sa/web",
		"spiffe://td/ns/default/sa/We",
	} {
		if ns, sa, ok := MustParse(s).ServiceAccount(); ok {
			t.Errorf("%s: ServiceAccount() = %q %q, want not ok", s, ns, sa)
		}
	}
}

func TestFromURI(t *testing.T) {
	good, _ := url.Parse("spiffe://td/ns/a/sa/b")
	if id, err := FromURI(good); err != nil || id.String() != "spiffe://td/ns/a/sa/b" {
		t.Fatalf("FromURI(good) = %v, %v", id, err)
	}
	for _, s := range []string{"spiffe://td/a%2Fb", "spiffe:opaque", "spiffe://td/x?", "spiffe://u:p@td/x"} {
		u, err := url.Parse(s)
		if err != nil {
			continue
		}
		if id, err := FromURI(u); err == nil {
			t.Errorf("FromURI(%q) = %v, want error", s, id)
		}
	}
	if _, err := FromURI(nil); err == nil {
		t.Error("FromURI(nil) succeeded")
	}
}

func TestZeroAndText(t *testing.T) {
	var z ID
	if !z.IsZero() || z.String() != "" || z.URL() != nil {
		t.Fatalf("zero ID misbehaves: %q %v", z.String(), z.URL())
	}
	type doc struct {
		ID    ID `json:"id"`
		Empty ID `json:"empty"`
	}
	in := doc{ID: MustParse("spiffe://td/ns/a/sa/b")}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"id":"spiffe://td/ns/a/sa/b","empty":""}` {
		t.Fatalf("marshal = %s", b)
	}
	var out doc
	if err := json.Unmarshal(b, &out); err != nil || out != in {
		t.Fatalf("round trip = %+v, %v", out, err)
	}
	if err := json.Unmarshal([]byte(`{"id":"spiffe://TD/x"}`), &out); err == nil {
		t.Fatal("unmarshal of an invalid ID succeeded")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/default/sa/web", "spiffe://td", "spiffe://td/", "spiffe://td/./x",
		"spiffe://td:1/x", "spiffe://td/x%41", "spiffe://td/ns/a/sa/b.c", "spiffe://td/ns/a/sa/b/c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) || !id.IsZero() {
				t.Fatalf("Parse(%q) error %v with ID %v", s, err, id)
			}
			return
		}
		// Accepted IDs are canonical: they print back byte for byte and survive a trip through net/url.
		if id.String() != s {
			t.Fatalf("Parse(%q).String() = %q", s, id)
		}
		if len(s) > MaxLength {
			t.Fatalf("accepted %d bytes", len(s))
		}
		u, err := url.Parse(id.URL().String())
		if err != nil {
			t.Fatalf("URL of %q does not parse: %v", s, err)
		}
		back, err := FromURI(u)
		if err != nil || back != id {
			t.Fatalf("FromURI(URL(%q)) = %v, %v", s, back, err)
		}
		if ns, sa, ok := id.ServiceAccount(); ok {
			again, err := FromServiceAccount(id.TrustDomain(), ns, sa)
			if err != nil || again != id {
				t.Fatalf("FromServiceAccount(ServiceAccount(%q)) = %v, %v", s, again, err)
			}
		}
	})
}
