package render

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
