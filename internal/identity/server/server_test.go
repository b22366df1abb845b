package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

const trustDomain = "cluster.local"

// fakeReviewer answers TokenReviews from a table of token -> status.
type fakeReviewer struct {
	mu       sync.Mutex
	statuses map[string]authenticationv1.TokenReviewStatus
	err      error
	specs    []authenticationv1.TokenReviewSpec
}

func (f *fakeReviewer) Create(_ context.Context, r *authenticationv1.TokenReview, _ metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.specs = append(f.specs, r.Spec)
	if f.err != nil {
		return nil, f.err
	}
	out := r.DeepCopy()
	out.Status = f.statuses[r.Spec.Token]
	return out, nil
}

func saStatus(ns, name string) authenticationv1.TokenReviewStatus {
	return authenticationv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     []string{identity.Audience},
		User:          authenticationv1.UserInfo{Username: "system:serviceaccount:" + ns + ":" + name},
	}
}

func refused(msg string) authenticationv1.TokenReviewStatus {
	return authenticationv1.TokenReviewStatus{Error: msg}
}

// unitServer returns a Server with a fake TokenReview API and a loaded issuer, for tests without an API server.
func unitServer(t testing.TB, iss *identitytest.CA, clk *clocktesting.FakePassiveClock, rev *fakeReviewer) (*Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := New(Options{
		TokenReviewer: rev,
		TrustDomain:   trustDomain,
		IssuerSecret:  types.NamespacedName{Namespace: "trellis-system", Name: "issuer"},
		Clock:         clk,
		Registerer:    reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if iss != nil {
		loaded, err := parseIssuer(iss.IssuerSecretData(t))
		if err != nil {
			t.Fatal(err)
		}
		s.issuer.Store(loaded)
	}
	return s, reg
}

var (
	webID   = spiffe.MustParse("spiffe://cluster.local/ns/shop/sa/web")
	otherID = spiffe.MustParse("spiffe://cluster.local/ns/shop/sa/other")
)

func newCSR(t testing.TB, id spiffe.ID) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p, err := identity.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return p, key
}

func parseChain(t testing.TB, p []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, p = pem.Decode(p)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func certifyCount(t testing.TB, s *Server, reason identity.Reason) float64 {
	t.Helper()
	return identitytest.Value(t, s.metrics.certify.WithLabelValues(reason.Result(), string(reason)))
}

// TestCertifyUnit covers the decisions of Certify with a fake TokenReview API, including the mapping of every
// TokenReview error text the kube-apiserver produces to a reason.
func TestCertifyUnit(t *testing.T) {
	root := identitytest.NewRoot(t, "anchor")
	iss := root.NewIntermediate(t, "issuer")
	now := time.Now().Truncate(time.Second)
	rev := &fakeReviewer{statuses: map[string]authenticationv1.TokenReviewStatus{
		"web":        saStatus("shop", "web"),
		"audience":   refused(`token audiences ["other"] is invalid for the target audiences ["identity.trellis.io"]`),
		"expired":    refused("service account token has expired"),
		"notyet":     refused("service account token is not valid yet"),
		"future":     refused("service account token is issued in the future"),
		"podgone":    refused("service account token has been invalidated"),
		"sagone":     refused(`serviceaccounts "web" not found`),
		"sadeleted":  refused("service account shop/web has been deleted"),
		"recreated":  refused("service account UID (1) does not match claim (2)"),
		"badsig":     refused("[invalid bearer token, square/go-jose: error in cryptographic primitive]"),
		"silent":     refused(""),
		"noaudience": {Authenticated: true, User: authenticationv1.UserInfo{Username: "system:serviceaccount:shop:web"}},
		"user":       {Authenticated: true, Audiences: []string{identity.Audience}, User: authenticationv1.UserInfo{Username: "alice"}},
		"badsa":      {Authenticated: true, Audiences: []string{identity.Audience}, User: authenticationv1.UserInfo{Username: "system:serviceaccount:shop"}},
	}}
	s, _ := unitServer(t, iss, clocktesting.NewFakePassiveClock(now), rev)
	webCSR, _ := newCSR(t, webID)
	otherCSR, _ := newCSR(t, otherID)
	foreignCSR, _ := newCSR(t, spiffe.MustParse("spiffe://other.domain/ns/shop/sa/web"))

	tests := []struct {
		name  string
		token string
		csr   []byte
		want  identity.Reason
	}{
		{"issued", "web", webCSR, identity.ReasonIssued},
		{"no token", "", webCSR, identity.ReasonMissingToken},
		{"wrong audience", "audience", webCSR, identity.ReasonWrongAudience},
		{"expired", "expired", webCSR, identity.ReasonTokenExpired},
		{"not valid yet", "notyet", webCSR, identity.ReasonTokenExpired},
		{"issued in the future", "future", webCSR, identity.ReasonTokenExpired},
		{"bound pod deleted", "podgone", webCSR, identity.ReasonTokenRevoked},
		{"service account gone", "sagone", webCSR, identity.ReasonTokenRevoked},
		{"service account deleting", "sadeleted", webCSR, identity.ReasonTokenRevoked},
		{"service account recreated", "recreated", webCSR, identity.ReasonTokenRevoked},
		{"bad signature", "badsig", webCSR, identity.ReasonInvalidToken},
		{"unauthenticated without a reason", "silent", webCSR, identity.ReasonInvalidToken},
		{"unknown token", "nobody", webCSR, identity.ReasonInvalidToken},
		{"API server ignored the audience", "noaudience", webCSR, identity.ReasonWrongAudience},
		{"not a service account", "user", webCSR, identity.ReasonNotServiceAccount},
		{"malformed service account name", "badsa", webCSR, identity.ReasonNotServiceAccount},
		{"another identity", "web", otherCSR, identity.ReasonIdentityMismatch},
		{"another trust domain", "web", foreignCSR, identity.ReasonIdentityMismatch},
		{"malformed CSR", "web", []byte("csr"), identity.ReasonMalformedCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := certifyCount(t, s, tt.want)
			chain, err := s.Certify(t.Context(), tt.token, tt.csr)
			if got := identity.ReasonOf(err); got != tt.want {
				t.Fatalf("reason %s (%v), want %s", got, err, tt.want)
			}
			if (chain != nil) != (tt.want == identity.ReasonIssued) {
				t.Fatalf("chain %v with reason %s", chain != nil, tt.want)
			}
			if certifyCount(t, s, tt.want) != before+1 {
				t.Fatalf("identity_certify_total{reason=%q} not incremented", tt.want)
			}
		})
	}
	for _, spec := range rev.specs {
		if len(spec.Audiences) != 1 || spec.Audiences[0] != identity.Audience {
			t.Fatalf("TokenReview asked for audiences %v", spec.Audiences)
		}
	}
	t.Run("TokenReview API down", func(t *testing.T) {
		down := &fakeReviewer{err: errors.New("connection refused")}
		s, _ := unitServer(t, iss, clocktesting.NewFakePassiveClock(now), down)
		if _, err := s.Certify(t.Context(), "web", webCSR); identity.ReasonOf(err) != identity.ReasonTokenReviewFailed {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no issuer loaded", func(t *testing.T) {
		s, _ := unitServer(t, nil, clocktesting.NewFakePassiveClock(now), rev)
		if _, err := s.Certify(t.Context(), "web", webCSR); identity.ReasonOf(err) != identity.ReasonIssuerUnavailable {
			t.Fatalf("got %v", err)
		}
		if s.ReadyCheck(nil) == nil {
			t.Fatal("ready without an issuer")
		}
	})
}

// TestLeafValidity checks the validity window: backdated NotBefore, LeafLifetime, and clamping to the issuer.
func TestLeafValidity(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	root := identitytest.NewRoot(t, "anchor")
	rev := &fakeReviewer{statuses: map[string]authenticationv1.TokenReviewStatus{"web": saStatus("shop", "web")}}
	csr, key := newCSR(t, webID)
	tests := []struct {
		name                        string
		issNotBefore, issNotAfter   time.Time
		wantNotBefore, wantNotAfter time.Time
	}{
		{"full lifetime", now.Add(-time.Hour), now.Add(48 * time.Hour), now.Add(-DefaultBackdate), now.Add(DefaultLeafLifetime)},
		{"issuer expires first", now.Add(-time.Hour), now.Add(2 * time.Hour), now.Add(-DefaultBackdate), now.Add(2 * time.Hour)},
		{"issuer just started", now.Add(-10 * time.Second), now.Add(48 * time.Hour), now.Add(-10 * time.Second), now.Add(DefaultLeafLifetime)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			iss := root.NewIntermediateValid(t, "issuer", tt.issNotBefore, tt.issNotAfter)
			s, _ := unitServer(t, iss, clocktesting.NewFakePassiveClock(now), rev)
			chainPEM, err := s.Certify(t.Context(), "web", csr)
			if err != nil {
				t.Fatal(err)
			}
			leaf := parseChain(t, chainPEM)[0]
			if !leaf.NotBefore.Equal(tt.wantNotBefore) || !leaf.NotAfter.Equal(tt.wantNotAfter) {
				t.Fatalf("validity %s..%s, want %s..%s", leaf.NotBefore, leaf.NotAfter, tt.wantNotBefore, tt.wantNotAfter)
			}
			if !key.PublicKey.Equal(leaf.PublicKey) {
				t.Fatal("leaf does not certify the CSR's key")
			}
		})
	}
}

func TestParseIssuer(t *testing.T) {
	root := identitytest.NewRoot(t, "anchor")
	iss := root.NewIntermediate(t, "issuer")
	otherRoot := identitytest.NewRoot(t, "other anchor")
	leaf := iss.SVID(t, webID)
	with := func(k, v string) map[string][]byte {
		d := iss.IssuerSecretData(t)
		d[k] = []byte(v)
		return d
	}
	sec1 := func() map[string][]byte {
		d := iss.IssuerSecretData(t)
		der, err := x509.MarshalECPrivateKey(iss.Key.(*ecdsa.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		d["tls.key"] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
		return d
	}()
	withRoot := iss.IssuerSecretData(t)
	withRoot["tls.crt"] = append(withRoot["tls.crt"], identitytest.PEMCerts(root.Cert)...)
	selfSignedIssuer := root.IssuerSecretData(t)
	tests := []struct {
		name      string
		data      map[string][]byte
		wantErr   string
		wantChain int
	}{
		{name: "cert-manager layout", data: iss.IssuerSecretData(t), wantChain: 1},
		{name: "SEC 1 key (cert-manager's default encoding)", data: sec1, wantChain: 1},
		{name: "root in tls.crt is not sent", data: withRoot, wantChain: 1},
		{name: "self-signed issuer", data: selfSignedIssuer, wantChain: 1},
		{name: "no ca.crt", data: func() map[string][]byte { d := iss.IssuerSecretData(t); delete(d, "ca.crt"); return d }(), wantChain: 1},
		{name: "empty", data: map[string][]byte{}, wantErr: "tls.crt"},
		{name: "key of another certificate", data: with("tls.key", string(identitytest.PEMKey(t, identitytest.NewKey(t)))), wantErr: "private key does not match"},
		{name: "not a CA", data: identitytest.TLSSecretData(t, leaf, root.Cert), wantErr: "not a CA"},
		{name: "ca.crt of another anchor", data: with("ca.crt", string(identitytest.PEMCerts(otherRoot.Cert))), wantErr: "does not chain"},
		{name: "ca.crt garbage", data: with("ca.crt", "garbage"), wantErr: "ca.crt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseIssuer(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseIssuer = %v, want error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := len(parseChain(t, got.chain)); n != tt.wantChain {
				t.Fatalf("chain has %d certificates, want %d", n, tt.wantChain)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	ok := Options{TokenReviewer: &fakeReviewer{}, TrustDomain: trustDomain, IssuerSecret: types.NamespacedName{Namespace: "n", Name: "i"}}
	for name, mutate := range map[string]func(*Options){
		"bad trust domain": func(o *Options) { o.TrustDomain = "Cluster.Local" },
		"no issuer":        func(o *Options) { o.IssuerSecret = types.NamespacedName{} },
		"no client":        func(o *Options) { o.TokenReviewer = nil },
	} {
		o := ok
		mutate(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: New accepted %+v", name, o)
		}
	}
	s, err := New(ok)
	if err != nil {
		t.Fatal(err)
	}
	if s.opts.Addr != DefaultAddr || s.opts.LeafLifetime != DefaultLeafLifetime || s.opts.Audience != identity.Audience || s.NeedLeaderElection() {
		t.Fatalf("defaults: %+v", s.opts)
	}
	if err := s.Start(t.Context()); err == nil {
		t.Fatal("Start without a Client succeeded")
	}
}

// TestHandler exercises the HTTP layer: status codes, JSON bodies, and metrics for requests refused before Certify.
func TestHandler(t *testing.T) {
	root := identitytest.NewRoot(t, "anchor")
	iss := root.NewIntermediate(t, "issuer")
	token := "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ3ZWIifQ.c2ln"
	rev := &fakeReviewer{statuses: map[string]authenticationv1.TokenReviewStatus{token: saStatus("shop", "web")}}
	s, _ := unitServer(t, iss, clocktesting.NewFakePassiveClock(time.Now()), rev)
	h := s.Handler()
	csr, _ := newCSR(t, webID)
	body, _ := json.Marshal(identity.CertifyRequest{CSR: string(csr)})

	tests := []struct {
		name        string
		method      string
		contentType string
		auth        string
		body        []byte
		status      int
		reason      identity.Reason
	}{
		{"issued", "POST", "application/json", "Bearer " + token, body, 200, identity.ReasonIssued},
		{"charset parameter", "POST", "application/json; charset=utf-8", "Bearer " + token, body, 200, identity.ReasonIssued},
		{"GET", "GET", "", "Bearer " + token, nil, 405, identity.ReasonMalformedRequest},
		{"form", "POST", "application/x-www-form-urlencoded", "Bearer " + token, body, 415, identity.ReasonMalformedRequest},
		{"no token", "POST", "application/json", "", body, 401, identity.ReasonMissingToken},
		{"not a JWT", "POST", "application/json", "Bearer secret", body, 401, identity.ReasonInvalidToken},
		{"bad JSON", "POST", "application/json", "Bearer " + token, []byte("{"), 400, identity.ReasonMalformedRequest},
		{"huge body", "POST", "application/json", "Bearer " + token, bytes.Repeat([]byte("a"), identity.MaxRequestBytes+1), 413, identity.ReasonMalformedRequest},
		{"weak key", "POST", "application/json", "Bearer " + token, []byte(`{"csr":"x"}`), 400, identity.ReasonMalformedCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := certifyCount(t, s, tt.reason)
			req := httptest.NewRequest(tt.method, identity.CertifyPath, bytes.NewReader(tt.body))
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d; body %s", rec.Code, tt.status, rec.Body)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
			if tt.status == 200 {
				var resp identity.CertifyResponse
				if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || len(parseChain(t, []byte(resp.CertificateChain))) != 2 {
					t.Fatalf("bad success body %s", rec.Body)
				}
			} else {
				var resp identity.ErrorResponse
				if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || resp.Reason != tt.reason || resp.Message == "" {
					t.Fatalf("bad error body %s", rec.Body)
				}
			}
			if certifyCount(t, s, tt.reason) != before+1 {
				t.Fatalf("metric for %s not incremented", tt.reason)
			}
		})
	}
}

// FuzzHandler sends arbitrary bodies and Authorization headers through the HTTP layer. Whatever arrives, the
// answer is JSON with a known reason and its status, and a certificate is only ever issued for the token's own
// identity.
func FuzzHandler(f *testing.F) {
	root := identitytest.NewRoot(f, "anchor")
	iss := root.NewIntermediate(f, "issuer")
	token := "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ3ZWIifQ.c2ln"
	rev := &fakeReviewer{statuses: map[string]authenticationv1.TokenReviewStatus{token: saStatus("shop", "web")}}
	s, _ := unitServer(f, iss, clocktesting.NewFakePassiveClock(time.Now()), rev)
	h := s.Handler()
	good, _ := newCSR(f, webID)
	other, _ := newCSR(f, otherID)
	for _, c := range [][]byte{good, other, []byte("x")} {
		b, _ := json.Marshal(identity.CertifyRequest{CSR: string(c)})
		f.Add(b, "Bearer "+token)
		f.Add(b, "Bearer a.b.c")
	}
	f.Add([]byte(`{"csr":""}`), "")
	f.Fuzz(func(t *testing.T, body []byte, auth string) {
		rev.mu.Lock()
		rev.specs = nil // keep memory flat over long runs
		rev.mu.Unlock()
		req := httptest.NewRequest("POST", identity.CertifyPath, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", auth)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code == 200 {
			var resp identity.CertifyResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
				t.Fatalf("200 with body %q", rec.Body)
			}
			leaf := parseChain(t, []byte(resp.CertificateChain))[0]
			if id, err := spiffe.FromCertificate(leaf); err != nil || id != webID {
				t.Fatalf("issued a certificate for %v (%v)", id, err)
			}
			return
		}
		var resp identity.ErrorResponse
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatalf("status %d with body %q", rec.Code, rec.Body)
		}
		if resp.Reason.HTTPStatus() != rec.Code || resp.Reason == identity.ReasonUnknown || resp.Reason.Result() == identity.ResultFailed {
			t.Fatalf("status %d with reason %s", rec.Code, resp.Reason)
		}
	})
}

func TestClassifyAndUsername(t *testing.T) {
	for u, want := range map[string][2]string{
		"system:serviceaccount:shop:web": {"shop", "web"},
		"system:serviceaccount:shop":     {},
		"system:serviceaccount::web":     {},
		"system:serviceaccount:a:b:c":    {},
		"system:node:n1":                 {},
	} {
		ns, name, ok := serviceAccountFromUsername(u)
		if ok != (want[0] != "") || ns != want[0] || name != want[1] {
			t.Errorf("%q: %q %q %v", u, ns, name, ok)
		}
	}
}
