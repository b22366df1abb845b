package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// servingName is the DNS name of the test identity service's serving certificate.
const servingName = "identity.test"

func newNamespace(t *testing.T) string {
	t.Helper()
	ns, err := kube.client.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "identity-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = kube.client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}

func createServiceAccount(t *testing.T, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	sa, err := kube.client.CoreV1().ServiceAccounts(ns).Create(t.Context(), &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{Name: name},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return sa
}

// requestToken asks the API server for a ServiceAccount token (the TokenRequest API the kubelet uses for projected
// tokens), valid for an hour, optionally bound to an object.
func requestToken(t *testing.T, ns, sa, audience string, bound *authenticationv1.BoundObjectReference) string {
	t.Helper()
	tr, err := kube.client.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: ptr.To[int64](3600),
			BoundObjectRef:    bound,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// resignToken rewrites the claims of a token the API server issued and signs it again with the API server's own
// ServiceAccount signing key (which envtest writes to its cert dir). The result is a token the API server itself
// issued in every respect but the edited claims, so its TokenReview verdict on them is the real one.
func resignToken(t *testing.T, token string, edit func(claims map[string]any)) string {
	t.Helper()
	parts := strings.Split(token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		t.Fatal(err)
	}
	edit(claims)
	payload, err = json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	header, _ := base64.RawURLEncoding.DecodeString(parts[0])
	if !strings.Contains(string(header), `"ES256"`) {
		t.Fatalf("token header %s: expected ES256 (envtest signs with a P-256 key)", header)
	}
	keyPEM, err := os.ReadFile(filepath.Join(kube.certDir, "sa-signer.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(keyPEM)
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key := k.(*ecdsa.PrivateKey)
	input := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func putSecret(t *testing.T, ns, name string, data map[string][]byte) {
	t.Helper()
	secrets := kube.client.CoreV1().Secrets(ns)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Type: corev1.SecretTypeTLS, Data: data}
	if _, err := secrets.Create(t.Context(), sec, metav1.CreateOptions{}); apierrors.IsAlreadyExists(err) {
		cur, err := secrets.Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Data = data
		if _, err := secrets.Update(t.Context(), cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	} else if err != nil {
		t.Fatal(err)
	}
}

// eventRecorder records real Events (events.k8s.io/v1) through the API server, as the manager's recorder does.
func eventRecorder() (events.EventRecorder, func()) {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: kube.client.EventsV1()})
	stop := make(chan struct{})
	b.StartRecordingToSink(stop)
	return b.NewRecorder(scheme.Scheme, "trellis-identity"), func() { close(stop); b.Shutdown() }
}

type testServer struct {
	*Server
	reg  *prometheus.Registry
	addr string
	ns   string
	stop func() // stops the server and its Event recorder; idempotent, also run by t.Cleanup
}

// startServer runs a Server against the test API server on 127.0.0.1:0, with the issuer Secret holding issuer, a
// serving certificate for servingName from root, and the tweaks applied; it waits until both Secrets are loaded.
func startServer(t *testing.T, ns string, issuer, root *identitytest.CA, tweak func(*Options)) *testServer {
	t.Helper()
	issuerName := "issuer-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	if len(issuerName) > 60 {
		issuerName = issuerName[:60]
	}
	issuerName = strings.Trim(strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, issuerName), "-")
	putSecret(t, ns, issuerName, issuer.IssuerSecretData(t))
	putSecret(t, ns, "identity-serving", identitytest.TLSSecretData(t, root.ServingCert(t, servingName), root.Cert))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	recorder, stopRecorder := eventRecorder()
	opts := Options{
		Client:        kube.client,
		TrustDomain:   trustDomain,
		IssuerSecret:  types.NamespacedName{Namespace: ns, Name: issuerName},
		ServingSecret: types.NamespacedName{Namespace: ns, Name: "identity-serving"},
		Listener:      ln,
		Registerer:    reg,
		Recorder:      recorder,
	}
	if tweak != nil {
		tweak(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Start returned %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("Start did not return after its context ended")
			}
			stopRecorder()
		})
	}
	t.Cleanup(stop)
	eventually(t, "issuer and serving Secrets loaded", func() bool { return s.ReadyCheck(nil) == nil })
	return &testServer{Server: s, reg: reg, addr: ln.Addr().String(), ns: ns, stop: stop}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 20s waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func saID(t *testing.T, ns, sa string) spiffe.ID {
	t.Helper()
	id, err := spiffe.FromServiceAccount(trustDomain, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func csrFor(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// TestIssuesCertificateForServiceAccount: a projected token for ServiceAccount a gets a 24h certificate for exactly
// a's SPIFFE ID, chaining through the issuer to the trust anchor.
func TestIssuesCertificateForServiceAccount(t *testing.T) {
	needKube(t)
	ns := newNamespace(t)
	createServiceAccount(t, ns, "a")
	root := identitytest.NewRoot(t, "trust anchor")
	issuer := root.NewIntermediate(t, "identity issuer")
	now := time.Now().Truncate(time.Second)
	srv := startServer(t, ns, issuer, root, func(o *Options) { o.Clock = clocktesting.NewFakePassiveClock(now) })

	csr, key := newCSR(t, saID(t, ns, "a"))
	chainPEM, err := srv.Certify(t.Context(), requestToken(t, ns, "a", identity.Audience, nil), csr)
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, chainPEM)
	if len(chain) != 2 || !chain[1].Equal(issuer.Cert) {
		t.Fatalf("chain has %d certificates; want the leaf and the issuer, never the anchor", len(chain))
	}
	leaf := chain[0]
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: identitytest.Pool(root.Cert), Intermediates: identitytest.Pool(chain[1]),
			CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage},
		}); err != nil {
			t.Fatalf("leaf does not verify to the trust anchor for %v: %v", usage, err)
		}
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/"+ns+"/sa/a" {
		t.Fatalf("URI SANs %v", leaf.URIs)
	}
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 || len(leaf.Subject.Names) != 0 || leaf.IsCA {
		t.Fatalf("leaf carries more than its SPIFFE ID: DNS %v IP %v email %v subject %v CA %v",
			leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, leaf.Subject, leaf.IsCA)
	}
	if got := leaf.NotAfter.Sub(now); got != 24*time.Hour {
		t.Fatalf("lifetime from issuance %v, want 24h", got)
	}
	if !leaf.NotBefore.Equal(now.Add(-DefaultBackdate)) {
		t.Fatalf("NotBefore %v, want issuance minus %v", leaf.NotBefore, DefaultBackdate)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Fatal("leaf does not certify the CSR's key")
	}
	for _, ext := range leaf.Extensions {
		if ext.Id.Equal(oidSAN) && !ext.Critical {
			t.Fatal("subjectAltName of a subject-less certificate must be critical")
		}
	}
	if certifyCount(t, srv.Server, identity.ReasonIssued) != 1 {
		t.Fatal("identity_certify_total{result=issued} not counted")
	}
	if fams := identitytest.Families(t, srv.reg); !fams[MetricCertifyTotal] || !fams[MetricIssuerExpirationTimestamp] {
		t.Fatalf("metrics not registered: %v", fams)
	}
	if got := identitytest.Value(t, srv.metrics.issuerExpiry); got != float64(issuer.Cert.NotAfter.Unix()) {
		t.Fatalf("issuer expiry gauge %v", got)
	}
}

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

func rsaKey(t *testing.T, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRefusals sends one forged or broken request per case, each with a real token from the API server, and
// checks the reason and the metric.
func TestRefusals(t *testing.T) {
	needKube(t)
	ns := newNamespace(t)
	createServiceAccount(t, ns, "a")
	createServiceAccount(t, ns, "b")
	now := time.Now()
	root := identitytest.NewRootValid(t, "trust anchor", now.Add(-100*time.Hour), now.Add(365*24*time.Hour))
	srv := startServer(t, ns, root.NewIntermediate(t, "identity issuer"), root, nil)

	idA := saID(t, ns, "a")
	tokenA := requestToken(t, ns, "a", identity.Audience, nil)
	goodCSR, _ := newCSR(t, idA)
	p256 := identitytest.NewKey(t)

	tests := []struct {
		name string
		// setup returns the token, the CSR and the server to ask; it may change cluster state first.
		setup func(t *testing.T) (string, []byte, *testServer)
		want  identity.Reason
		// retry allows the API server's caches a few seconds to see a deletion.
		retry bool
	}{
		{
			name: "wrong audience",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				return requestToken(t, ns, "a", "vault.example.com", nil), goodCSR, srv
			},
			want: identity.ReasonWrongAudience,
		},
		{
			name: "revoked: the pod the token is bound to was deleted",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				pod, err := kube.client.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
					ObjectMeta: metav1.ObjectMeta{Name: "web-0"},
					Spec:       corev1.PodSpec{ServiceAccountName: "a", Containers: []corev1.Container{{Name: "app", Image: "app"}}},
				}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				token := requestToken(t, ns, "a", identity.Audience, &authenticationv1.BoundObjectReference{
					Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
				})
				if err := kube.client.CoreV1().Pods(ns).Delete(t.Context(), pod.Name, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
				eventually(t, "pod gone", func() bool {
					_, err := kube.client.CoreV1().Pods(ns).Get(t.Context(), pod.Name, metav1.GetOptions{})
					return apierrors.IsNotFound(err)
				})
				return token, goodCSR, srv
			},
			want:  identity.ReasonTokenRevoked,
			retry: true,
		},
		{
			name: "revoked: the ServiceAccount was deleted",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				createServiceAccount(t, ns, "gone")
				token := requestToken(t, ns, "gone", identity.Audience, nil)
				if err := kube.client.CoreV1().ServiceAccounts(ns).Delete(t.Context(), "gone", metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
				csr, _ := newCSR(t, saID(t, ns, "gone"))
				return token, csr, srv
			},
			want:  identity.ReasonTokenRevoked,
			retry: true,
		},
		{
			// The TokenRequest API refuses lifetimes under 10 minutes, and a test cannot wait that long. Instead
			// the token the API server issued is re-signed with the API server's own signing key with exp moved
			// an hour into the past, so that the API server's TokenReview judges a genuinely expired token.
			// The next case is the control: the same re-signing with a future exp is accepted.
			name: "expired token",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				return resignToken(t, tokenA, func(c map[string]any) {
					c["iat"], c["nbf"], c["exp"] = now.Add(-3*time.Hour).Unix(), now.Add(-3*time.Hour).Unix(), now.Add(-time.Hour).Unix()
				}), goodCSR, srv
			},
			want: identity.ReasonTokenExpired,
		},
		{
			name: "control: the same re-signed token, not expired, is accepted",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				return resignToken(t, tokenA, func(c map[string]any) {
					c["iat"], c["nbf"], c["exp"] = now.Add(-time.Minute).Unix(), now.Add(-time.Minute).Unix(), now.Add(time.Hour).Unix()
				}), goodCSR, srv
			},
			want: identity.ReasonIssued,
		},
		{
			name: "token signed by another key",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				parts := strings.Split(tokenA, ".")
				return parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(make([]byte, 64)), goodCSR, srv
			},
			want: identity.ReasonInvalidToken,
		},
		{
			name: "CSR for another identity (b) with a's token",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				csr, _ := newCSR(t, saID(t, ns, "b"))
				return tokenA, csr, srv
			},
			want: identity.ReasonIdentityMismatch,
		},
		{
			name: "extra DNS SAN",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				return tokenA, csrFor(t, p256, &x509.CertificateRequest{URIs: []*url.URL{idA.URL()}, DNSNames: []string{"a." + ns + ".svc"}}), srv
			},
			want: identity.ReasonExtraSAN,
		},
		{
			name: "extra IP SAN",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				return tokenA, csrFor(t, p256, &x509.CertificateRequest{URIs: []*url.URL{idA.URL()}, IPAddresses: []net.IP{net.ParseIP("10.0.0.7")}}), srv
			},
			want: identity.ReasonExtraSAN,
		},
		{
			name: "second URI SAN",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				return tokenA, csrFor(t, p256, &x509.CertificateRequest{URIs: []*url.URL{idA.URL(), saID(t, ns, "b").URL()}}), srv
			},
			want: identity.ReasonExtraSAN,
		},
		{
			name: "missing SAN",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				return tokenA, csrFor(t, p256, &x509.CertificateRequest{}), srv
			},
			want: identity.ReasonMissingSAN,
		},
		{
			name: "weak key: RSA 1024",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				return tokenA, csrFor(t, rsaKey(t, 1024), &x509.CertificateRequest{URIs: []*url.URL{idA.URL()}}), srv
			},
			want: identity.ReasonWeakKey,
		},
		{
			name: "bad CSR signature",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				block, _ := pem.Decode(goodCSR)
				der := bytes.Clone(block.Bytes)
				der[len(der)-3] ^= 0x40
				return tokenA, pem.EncodeToMemory(&pem.Block{Type: block.Type, Bytes: der}), srv
			},
			want: identity.ReasonBadCSRSignature,
		},
		{
			name: "issuer not yet valid",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				future := root.NewIntermediateValid(t, "future issuer", now.Add(time.Hour), now.Add(49*time.Hour))
				return tokenA, goodCSR, startServer(t, ns, future, root, nil)
			},
			want: identity.ReasonIssuerNotYetValid,
		},
		{
			name: "issuer expired",
			setup: func(t *testing.T) (string, []byte, *testServer) {
				past := root.NewIntermediateValid(t, "expired issuer", now.Add(-50*time.Hour), now.Add(-2*time.Hour))
				return tokenA, goodCSR, startServer(t, ns, past, root, nil)
			},
			want: identity.ReasonIssuerExpired,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, csr, s := tt.setup(t)
			before := certifyCount(t, s.Server, tt.want)
			var err error
			deadline := time.Now().Add(20 * time.Second)
			for {
				_, err = s.Certify(t.Context(), token, csr)
				if identity.ReasonOf(err) == tt.want || !tt.retry || time.Now().After(deadline) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if got := identity.ReasonOf(err); got != tt.want {
				t.Fatalf("reason %s (%v), want %s", got, err, tt.want)
			}
			if err != nil {
				t.Logf("refused: %v", err)
			}
			if certifyCount(t, s.Server, tt.want) < before+1 {
				t.Fatalf("identity_certify_total{reason=%q} not incremented", tt.want)
			}
		})
	}
}

// TestIssuerRotation: when cert-manager rotates the issuer Secret, new leaves chain to the new issuer and an Event
// says so; a broken or deleted Secret leaves the last good issuer in service, with a Warning Event.
func TestIssuerRotation(t *testing.T) {
	needKube(t)
	ns := newNamespace(t)
	createServiceAccount(t, ns, "a")
	root := identitytest.NewRoot(t, "trust anchor")
	first := root.NewIntermediate(t, "identity issuer 1")
	srv := startServer(t, ns, first, root, nil)
	token := requestToken(t, ns, "a", identity.Audience, nil)
	csr, _ := newCSR(t, saID(t, ns, "a"))
	signer := func() *x509.Certificate {
		chain, err := srv.Certify(t.Context(), token, csr)
		if err != nil {
			t.Fatal(err)
		}
		return parseChain(t, chain)[1]
	}
	if !signer().Equal(first.Cert) {
		t.Fatal("first leaf not signed by the first issuer")
	}

	second := root.NewIntermediate(t, "identity issuer 2")
	putSecret(t, ns, srv.opts.IssuerSecret.Name, second.IssuerSecretData(t))
	eventually(t, "leaves from the rotated issuer", func() bool { return signer().Equal(second.Cert) })
	chain, _ := srv.Certify(t.Context(), token, csr)
	leaf := parseChain(t, chain)[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: identitytest.Pool(root.Cert), Intermediates: identitytest.Pool(second.Cert)}); err != nil {
		t.Fatalf("leaf from the rotated issuer does not verify: %v", err)
	}
	waitEvent(t, ns, srv.opts.IssuerSecret.Name, EventIssuerRotated, "Normal")

	broken := second.IssuerSecretData(t)
	broken["tls.key"] = identitytest.PEMKey(t, identitytest.NewKey(t))
	putSecret(t, ns, srv.opts.IssuerSecret.Name, broken)
	waitEvent(t, ns, srv.opts.IssuerSecret.Name, EventIssuerInvalid, "Warning")
	if !signer().Equal(second.Cert) {
		t.Fatal("an invalid Secret replaced the issuer")
	}

	if err := kube.client.CoreV1().Secrets(ns).Delete(t.Context(), srv.opts.IssuerSecret.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, ns, srv.opts.IssuerSecret.Name, EventIssuerDeleted, "Warning")
	if !signer().Equal(second.Cert) {
		t.Fatal("deleting the Secret stopped issuance")
	}
	if got := identitytest.Value(t, srv.metrics.secretLoad.WithLabelValues("issuer", "loaded")); got != 2 {
		t.Fatalf("issuer loads %v, want 2", got)
	}
	if got := identitytest.Value(t, srv.metrics.issuerExpiry); got != float64(second.Cert.NotAfter.Unix()) {
		t.Fatalf("issuer expiry gauge %v, want the rotated issuer's", got)
	}
}

// waitEvent waits for an Event about a Secret with the given reason and type, in the API server.
func waitEvent(t *testing.T, ns, secret, reason, eventType string) {
	t.Helper()
	eventually(t, "Event "+reason+" on Secret "+secret, func() bool {
		list, err := kube.client.EventsV1().Events(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range list.Items {
			if e.Regarding.Kind == "Secret" && e.Regarding.Name == secret && e.Reason == reason && e.Type == eventType {
				t.Logf("Event %s %s: %s", e.Type, e.Reason, e.Note)
				return true
			}
		}
		return false
	})
}

// TestServingCertificateRotation: a rotated serving Secret is served on the next handshake, without a restart.
func TestServingCertificateRotation(t *testing.T) {
	needKube(t)
	ns := newNamespace(t)
	root := identitytest.NewRoot(t, "trust anchor")
	srv := startServer(t, ns, root.NewIntermediate(t, "identity issuer"), root, nil)
	served := func() *x509.Certificate {
		conn, err := tls.Dial("tcp", srv.addr, &tls.Config{RootCAs: identitytest.Pool(root.Cert), ServerName: servingName})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	before := served()
	next := root.ServingCert(t, servingName)
	putSecret(t, ns, "identity-serving", identitytest.TLSSecretData(t, next, root.Cert))
	eventually(t, "rotated serving certificate", func() bool { return served().Equal(next.Leaf) })
	if before.Equal(next.Leaf) {
		t.Fatal("test did not rotate anything")
	}
	waitEvent(t, ns, "identity-serving", EventServingCertRotated, "Normal")
	if _, err := tls.Dial("tcp", srv.addr, &tls.Config{RootCAs: identitytest.Pool(root.Cert), ServerName: servingName, MaxVersion: tls.VersionTLS12}); err == nil {
		t.Fatal("identity service accepted TLS 1.2")
	}
}
