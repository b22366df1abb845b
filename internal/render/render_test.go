package render

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// golden compares objects, as a YAML stream, with testdata/<name>.golden.yaml.
func golden(t *testing.T, name string, objs []client.Object) {
	t.Helper()
	var docs []string
	for _, o := range objs {
		data, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(data))
	}
	got := strings.Join(docs, "---\n")
	path := filepath.Join("testdata", name+".golden.yaml")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/render -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("%s differs from the golden file (run with -update after checking the change):\n--- got\n%s", path, got)
	}
}

// testMesh is a Mesh with the defaults the API server would apply.
func testMesh() *meshv1alpha1.Mesh {
	d := func(s string) *metav1.Duration {
		v, _ := time.ParseDuration(s)
		return &metav1.Duration{Duration: v}
	}
	return &meshv1alpha1.Mesh{
		ObjectMeta: metav1.ObjectMeta{Name: "prod", UID: "0b5e5c1e-0000-4000-8000-000000000001", Generation: 3},
		Spec: meshv1alpha1.MeshSpec{
			ControlPlaneNamespace: "trellis-system",
			TrustDomain:           "prod.example.com",
			Identity: meshv1alpha1.IdentitySpec{
				TrustAnchorLifetime:  d("8760h"),
				IssuerLifetime:       d("48h"),
				IssuerRenewBefore:    d("25h"),
				WorkloadCertLifetime: d("24h"),
			},
		},
	}
}

func TestIdentityObjectsGolden(t *testing.T) {
	golden(t, "identity-default", IdentityObjects(testMesh()))
	byo := testMesh()
	byo.Spec.Identity.IssuerRef = &meshv1alpha1.IssuerReference{Name: "vault", Kind: "ClusterIssuer", Group: "cert-manager.io"}
	golden(t, "identity-issuerref", IdentityObjects(byo))
}

func TestTrustBundlesGolden(t *testing.T) {
	golden(t, "trust-bundles", TrustBundles(testMesh(), []string{"shop", "web"}, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
}

// testCA makes a self-signed CA valid from notBefore for lifetime.
func testCA(t *testing.T, cn string, notBefore time.Time, lifetime time.Duration) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), fixedRand{})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(notBefore.Unix()), Subject: pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notBefore.Add(lifetime), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(fixedRand{}, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fixedRand is a deterministic entropy source for test keys.
type fixedRand struct{}

func (fixedRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i*7 + 1)
	}
	return len(p), nil
}

func TestTrustAnchors(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	old := testCA(t, "old", t0, 48*time.Hour)
	current := testCA(t, "current", t0.Add(24*time.Hour), 48*time.Hour)
	expired := testCA(t, "expired", t0.Add(-72*time.Hour), 24*time.Hour)
	now := t0.Add(30 * time.Hour)

	names := func(certs []*x509.Certificate) string {
		var n []string
		for _, c := range certs {
			n = append(n, c.Subject.CommonName)
		}
		return strings.Join(n, ",")
	}
	cases := []struct {
		name              string
		current, previous []*x509.Certificate
		want              string
	}{
		{"current only", []*x509.Certificate{current}, nil, "current"},
		{"previous kept until it expires", []*x509.Certificate{current}, []*x509.Certificate{current, old}, "current,old"},
		{"expired previous dropped", []*x509.Certificate{current}, []*x509.Certificate{expired, old}, "current,old"},
		{"duplicates removed, newest current first", []*x509.Certificate{old, current, current}, nil, "current,old"},
		{"nothing current: previous still trusted", nil, []*x509.Certificate{old}, "old"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := names(TrustAnchors(tc.current, tc.previous, now)); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env) }

func TestInjectorWebhookGolden(t *testing.T) {
	m := testMesh()
	m.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"trellis.io/inject": "enabled"}}
	svc := types.NamespacedName{Namespace: "trellis-system", Name: "trellis-webhook"}
	golden(t, "injector", []client.Object{InjectorWebhook(m, svc, []byte("CA"), []string{"trellis-system", "trellis-system"})})
}

// goldenJSON compares v, as indented JSON, with testdata/<name>.golden.json.
func goldenJSON(t *testing.T, name string, v any) {
	t.Helper()
	got, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", name+".golden.json")
	if *update {
		if err := os.WriteFile(path, append(got, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/render -update to create it)", err)
	}
	if string(append(got, '\n')) != string(want) {
		t.Fatalf("%s differs from the golden file (run with -update after checking the change):\n%s", path, got)
	}
}

// TestProxyConfigGolden renders a namespace with a Service split 90/10 between two versions behind a
// header match, a MeshPolicy with a route, an opaque database port, meshed and unmeshed endpoints, an IPv6
// slice the IPv4 Service ignores, and a headless Service left out.
func TestProxyConfigGolden(t *testing.T) {
	m := testMesh()
	m.Spec.DefaultPolicy = meshv1alpha1.DefaultPolicyAllAuthenticated
	m.Spec.Proxy.OpaquePorts = []int32{5432, 3306}
	m.Spec.Traffic.RetryBudget = meshv1alpha1.RetryBudget{Ratio: "0.2", MinPerSecond: 10, TTL: &metav1.Duration{Duration: 10 * time.Second}}
	svc := func(name, ip string, ports ...corev1.ServicePort) corev1.Service {
		return corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, ClusterIPs: []string{ip}, Ports: ports, Selector: map[string]string{"app": name}}}
	}
	http := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), AppProtocol: ptr.To("http")}
	grpc := corev1.ServicePort{Name: "grpc", Port: 9090, AppProtocol: ptr.To("kubernetes.io/h2c")}
	slice := func(svc string, family discoveryv1.AddressType, port string, target int32, eps ...discoveryv1.Endpoint) discoveryv1.EndpointSlice {
		return discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: svc + "-" + string(family), Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
			AddressType: family, Endpoints: eps,
			Ports: []discoveryv1.EndpointPort{{Name: ptr.To(port), Port: ptr.To(target)}},
		}
	}
	ep := func(ip, pod string, ready bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: pod}}
	}
	headless := svc("cache", "None", http)
	snap := &ProxySnapshot{
		Mesh: m, ClusterDomain: "cluster.local",
		Services: []corev1.Service{
			svc("web", "10.96.0.10", http, grpc), svc("web-v1", "10.96.0.11", http, grpc), svc("web-v2", "10.96.0.12", http, grpc),
			svc("db", "10.96.0.20", corev1.ServicePort{Name: "pg", Port: 5432}), headless,
		},
		EndpointSlices: []discoveryv1.EndpointSlice{
			slice("web-v1", discoveryv1.AddressTypeIPv4, "http", 8080, ep("10.244.0.2", "v1-a", true), ep("10.244.0.3", "v1-b", false)),
			slice("web-v1", discoveryv1.AddressTypeIPv6, "http", 8080, ep("fd00::2", "v1-a", true)),
			slice("web-v2", discoveryv1.AddressTypeIPv4, "http", 8080, ep("10.244.0.4", "v2-a", true)),
			slice("db", discoveryv1.AddressTypeIPv4, "pg", 5432, ep("10.244.0.9", "db-0", true)),
			slice("web", discoveryv1.AddressTypeIPv4, "http", 8080, ep("10.244.0.2", "v1-a", true), ep("10.244.0.4", "v2-a", true)),
		},
		Pods: map[types.NamespacedName]PodInfo{
			{Namespace: "shop", Name: "v1-a"}: {ServiceAccount: "web", Meshed: true},
			{Namespace: "shop", Name: "v2-a"}: {ServiceAccount: "web", Meshed: true},
			{Namespace: "shop", Name: "db-0"}: {ServiceAccount: "db", Meshed: false},
		},
		Policies: []meshv1alpha1.MeshPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
			Spec: meshv1alpha1.MeshPolicySpec{
				TargetRef: &meshv1alpha1.PolicyTargetReference{Name: "web"}, Ports: []int32{80},
				Timeouts: &meshv1alpha1.Timeouts{Request: &metav1.Duration{Duration: 5 * time.Second}},
				Retries: &meshv1alpha1.Retries{RetryOn: []meshv1alpha1.RetryOn{"gateway-error", "retriable-status-codes", "unavailable"}, StatusCodes: []int32{429},
					Attempts: 2, PerTryTimeout: &metav1.Duration{Duration: time.Second}, MaxBodyBytes: 65536,
					Backoff: &meshv1alpha1.Backoff{Base: &metav1.Duration{Duration: 25 * time.Millisecond}, Max: &metav1.Duration{Duration: 250 * time.Millisecond}}},
				LoadBalancer: meshv1alpha1.LoadBalancerLeastRequest,
				CircuitBreaking: &meshv1alpha1.CircuitBreaking{MaxRequests: ptr.To(int32(100)), MaxPendingRequests: ptr.To(int32(10)),
					ConsecutiveFailures: ptr.To(int32(5))},
				Routes: []meshv1alpha1.Route{{Name: "items", Matches: []meshv1alpha1.HTTPMatch{{Method: "GET",
					Path: &meshv1alpha1.PathMatch{Type: meshv1alpha1.PathMatchPathPrefix, Value: "/items"}}}}},
				Authorization: &meshv1alpha1.Authorization{Rules: []meshv1alpha1.AuthorizationRule{
					{Name: "frontend", From: []meshv1alpha1.AuthorizationSource{{ServiceAccount: &meshv1alpha1.ServiceAccountReference{Namespace: "shop", Name: "frontend"}}}},
					{Name: "metrics", From: []meshv1alpha1.AuthorizationSource{{Namespace: "monitoring"}, {Unauthenticated: true}},
						To: []meshv1alpha1.AuthorizationTarget{{Paths: []string{"/metrics"}, Methods: []meshv1alpha1.HTTPMethod{"GET"}}}},
				}},
			},
		}, {
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-clients"},
			Spec: meshv1alpha1.MeshPolicySpec{
				WorkloadSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Authorization: &meshv1alpha1.Authorization{Rules: []meshv1alpha1.AuthorizationRule{
					{Name: "web", From: []meshv1alpha1.AuthorizationSource{{Identity: "spiffe://prod.example.com/ns/shop/sa/web"}}},
				}},
			},
		}},
		Splits: []meshv1alpha1.TrafficSplit{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "canary"},
			Spec: meshv1alpha1.TrafficSplitSpec{Service: "web",
				Backends: []meshv1alpha1.TrafficSplitBackend{{Service: "web-v1", Weight: 90}, {Service: "web-v2", Weight: 10}, {Service: "web-v3", Weight: 0}},
				Matches:  []meshv1alpha1.HTTPMatch{{Headers: []meshv1alpha1.HeaderMatch{{Name: "x-canary", Value: "1"}}}}},
		}},
	}
	cfg := ProxyConfig(snap)
	goldenJSON(t, "proxy-config", cfg)
	if _, _, err := EncodeProxyConfig(cfg); err != nil {
		t.Fatalf("the rendered configuration does not validate: %v", err)
	}
}

func TestProxyConfigReaderGolden(t *testing.T) {
	golden(t, "proxy-config-reader", ProxyConfigReader(testMesh(), "shop"))
}
