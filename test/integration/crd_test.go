// Package integration holds tests that run against a real kube-apiserver and etcd: the CRDs as users meet them at
// `kubectl apply` time.
package integration

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env, testenv.WithCertManagerCRDs()...) }

func isAlreadyExists(err error) bool { return apierrors.IsAlreadyExists(err) }

func newClient(t *testing.T) client.Client {
	t.Helper()
	env.Require(t)
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := meshv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func createNamespace(t *testing.T, c client.Client, name string) {
	t.Helper()
	if err := c.Create(ctx(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
}

func fromYAML(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatalf("bad test YAML: %v\n%s", err, doc)
	}
	return u
}

func TestCRDsInstalledWithPrinterColumns(t *testing.T) {
	c := newClient(t)
	want := map[string][]string{
		"meshes.mesh.trellis.io":        {"Ready", "Mode", "Namespaces", "Proxies", "Age"},
		"meshpolicies.mesh.trellis.io":  {"Target", "Accepted", "Age"},
		"trafficsplits.mesh.trellis.io": {"Service", "Backends", "Accepted", "Age"},
	}
	for name, columns := range want {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := c.Get(ctx(t), client.ObjectKey{Name: name}, crd); err != nil {
			t.Fatalf("CRD %s: %v", name, err)
		}
		established := false
		for _, cond := range crd.Status.Conditions {
			established = established || (cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue)
		}
		if !established {
			t.Errorf("CRD %s is not Established", name)
		}
		got := map[string]bool{}
		for _, col := range crd.Spec.Versions[0].AdditionalPrinterColumns {
			got[col.Name] = true
		}
		for _, col := range columns {
			if !got[col] {
				t.Errorf("CRD %s lacks printer column %q", name, col)
			}
		}
		if len(crd.Spec.Names.ShortNames) == 0 {
			t.Errorf("CRD %s has no short name", name)
		}
	}
}

func TestSamplesAccepted(t *testing.T) {
	c := newClient(t)
	createNamespace(t, c, "samples")
	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "samples", "mesh_*.yaml"))
	if err != nil || len(files) < 3 {
		t.Fatalf("want at least 3 samples, found %v (%v)", files, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			obj := fromYAML(t, doc)
			if obj.GetKind() != "Mesh" {
				obj.SetNamespace("samples")
			} else {
				obj.SetName("sample-" + obj.GetName())
			}
			if err := c.Create(ctx(t), obj); err != nil {
				t.Errorf("sample %s (%s) rejected: %v", filepath.Base(f), obj.GetKind(), err)
			}
		}
	}
}

// TestInvalidObjectsRejected asserts the message a user sees from `kubectl apply` for each mistake.
func TestInvalidObjectsRejected(t *testing.T) {
	c := newClient(t)
	createNamespace(t, c, "invalid")
	const split = "apiVersion: mesh.trellis.io/v1alpha1\nkind: TrafficSplit\nmetadata: {name: x, namespace: invalid}\n"
	const policy = "apiVersion: mesh.trellis.io/v1alpha1\nkind: MeshPolicy\nmetadata: {name: x, namespace: invalid}\n"
	const mesh = "apiVersion: mesh.trellis.io/v1alpha1\nkind: Mesh\nmetadata: {name: x}\n"
	cases := []struct {
		name, doc, want string
	}{
		{"split all weights zero", split + "spec: {service: web, backends: [{service: a, weight: 0}, {service: b, weight: 0}]}",
			"at least one backend must have a weight above 0"},
		{"split duplicate backends", split + "spec: {service: web, backends: [{service: a, weight: 1}, {service: a, weight: 2}]}",
			"backend services must be unique"},
		{"split backend is root", split + "spec: {service: web, backends: [{service: web, weight: 1}, {service: b, weight: 2}]}",
			"a backend may not be the root service itself"},
		{"split negative weight", split + "spec: {service: web, backends: [{service: a, weight: -1}, {service: b, weight: 2}]}",
			"should be greater than or equal to 0"},
		{"split no backends", split + "spec: {service: web, backends: []}", "should have at least 1 items"},
		{"split match path without slash", split + "spec: {service: web, backends: [{service: a, weight: 1}], matches: [{path: {value: api}}]}",
			"path value must start with '/'"},
		{"split bad service name", split + "spec: {service: Web_1, backends: [{service: a, weight: 1}]}", "should match"},
		{"mesh retry ratio above 1", mesh + "spec: {traffic: {retryBudget: {ratio: '1.5'}}}", "ratio must be a decimal between 0 and 1"},
		{"mesh zero request timeout", mesh + "spec: {traffic: {requestTimeout: 0s}}", "requestTimeout must be greater than 0"},
		{"mesh unknown mode", mesh + "spec: {proxy: {mode: Ambient}}", `supported values: "Sidecar", "DaemonSet"`},
		{"mesh unknown default policy", mesh + "spec: {defaultPolicy: AllowAll}", `Unsupported value: "AllowAll"`},
		{"mesh clashing proxy ports", mesh + "spec: {proxy: {ports: {outbound: 4143, inbound: 4143}}}", "outbound, inbound and admin ports must be distinct"},
		{"mesh port out of range", mesh + "spec: {proxy: {skipInboundPorts: [70000]}}", "should be less than or equal to 65535"},
		{"mesh bad CIDR", mesh + "spec: {proxy: {ignoredCIDRs: ['10.0.0.0']}}", "each ignoredCIDRs entry must be a CIDR"},
		{"mesh workload cert outlives issuer", mesh + "spec: {identity: {workloadCertLifetime: 72h}}", "workloadCertLifetime must be shorter than issuerLifetime"},
		{"mesh backoff min above max", mesh + "spec: {traffic: {failureAccrual: {minBackoff: 2m, maxBackoff: 1m}}}", "minBackoff must not be longer than maxBackoff"},
		{"mesh bad trust domain", mesh + "spec: {trustDomain: 'Not A Domain'}", "should match"},
		{"mesh garbage duration", mesh + "spec: {traffic: {requestTimeout: soon}}", `requestTimeout in body should match '^([0-9]+`},
		{"policy target and selector", policy + "spec: {targetRef: {name: web}, workloadSelector: {matchLabels: {app: web}}}",
			"set exactly one of targetRef (a Service) or workloadSelector (pods)"},
		{"policy without target", policy + "spec: {ports: [80]}", "set exactly one of targetRef (a Service) or workloadSelector (pods)"},
		{"policy source with two kinds", policy + "spec: {targetRef: {name: web}, authorization: {rules: [{name: r, from: [{namespace: a, unauthenticated: true}]}]}}",
			"set exactly one of identity, serviceAccount, namespace or unauthenticated: true"},
		{"policy identity not SPIFFE", policy + "spec: {targetRef: {name: web}, authorization: {rules: [{name: r, from: [{identity: 'web.shop'}]}]}}",
			"identity must be a SPIFFE ID starting with spiffe://"},
		{"policy status codes without retriable-status-codes", policy + "spec: {targetRef: {name: web}, retries: {retryOn: [5xx], statusCodes: [429]}}",
			"statusCodes requires 'retriable-status-codes' in retryOn"},
		{"policy too many attempts", policy + "spec: {targetRef: {name: web}, retries: {attempts: 11}}", "should be less than or equal to 10"},
		{"policy route without matches", policy + "spec: {targetRef: {name: web}, routes: [{name: r, matches: []}]}", "should have at least 1 items"},
		{"policy duplicate route names", policy + "spec: {targetRef: {name: web}, routes: [{name: r, matches: [{method: GET}]}, {name: r, matches: [{method: PUT}]}]}",
			"Duplicate value"},
		{"policy routes with workload selector", policy + "spec: {workloadSelector: {matchLabels: {app: web}}, routes: [{name: r, matches: [{method: GET}]}]}",
			"routes need a Service targetRef"},
		{"policy unknown target kind", policy + "spec: {targetRef: {kind: Deployment, name: web}}", `supported values: "Service"`},
		{"policy unknown load balancer", policy + "spec: {targetRef: {name: web}, loadBalancer: Random}", `Unsupported value: "Random"`},
	}
	if len(cases) < 15 {
		t.Fatalf("the table must hold at least 15 invalid objects, has %d", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Create(ctx(t), fromYAML(t, tc.doc))
			if err == nil {
				t.Fatalf("accepted an invalid object:\n%s", tc.doc)
			}
			t.Logf("rejected: %v", err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("message %q\ndoes not contain %q", err.Error(), tc.want)
			}
		})
	}
}

func TestImmutableMeshFields(t *testing.T) {
	c := newClient(t)
	m := &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "immutable"}}
	if err := c.Create(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if m.Spec.TrustDomain != "cluster.local" || m.Spec.ControlPlaneNamespace != "trellis-system" {
		t.Fatalf("defaults not applied: %+v", m.Spec)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*meshv1alpha1.Mesh)
		want   string
	}{
		{"trustDomain", func(m *meshv1alpha1.Mesh) { m.Spec.TrustDomain = "example.org" }, "trustDomain is immutable"},
		{"controlPlaneNamespace", func(m *meshv1alpha1.Mesh) { m.Spec.ControlPlaneNamespace = "other" }, "controlPlaneNamespace is immutable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changed := m.DeepCopy()
			tc.mutate(changed)
			err := c.Update(ctx(t), changed)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error containing %q, got %v", tc.want, err)
			}
		})
	}
}

func TestMeshDefaults(t *testing.T) {
	c := newClient(t)
	m := &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "defaults"}}
	if err := c.Create(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	s := m.Spec
	checks := map[string]bool{
		"namespaceSelector trellis.io/inject=enabled": s.NamespaceSelector != nil && s.NamespaceSelector.MatchLabels["trellis.io/inject"] == "enabled",
		"mode Sidecar":           s.Proxy.Mode == meshv1alpha1.ProxyModeSidecar,
		"ports 4140/4143/4191":   s.Proxy.Ports.Outbound == 4140 && s.Proxy.Ports.Inbound == 4143 && s.Proxy.Ports.Admin == 4191,
		"nativeSidecar true":     s.Proxy.NativeSidecar != nil && *s.Proxy.NativeSidecar,
		"defaultPolicy":          s.DefaultPolicy == meshv1alpha1.DefaultPolicyAllUnauthenticated,
		"retry budget 0.2/10/10": s.Traffic.RetryBudget.Ratio == "0.2" && s.Traffic.RetryBudget.MinPerSecond == 10 && s.Traffic.RetryBudget.TTL.Duration == 10*time.Second,
		"failure accrual 7":      s.Traffic.FailureAccrual.ConsecutiveFailures == 7,
		"issuer 48h/25h":         s.Identity.IssuerLifetime.Duration == 48*time.Hour && s.Identity.IssuerRenewBefore.Duration == 25*time.Hour,
		"workload cert 24h":      s.Identity.WorkloadCertLifetime.Duration == 24*time.Hour,
		"opaque ports":           len(s.Proxy.OpaquePorts) == 8,
	}
	for what, ok := range checks {
		if !ok {
			t.Errorf("default %s not applied: %+v", what, s)
		}
	}
}

// TestKubectlApplyBadTrafficSplit runs the real kubectl against the API server, as a user would.
func TestKubectlApplyBadTrafficSplit(t *testing.T) {
	c := newClient(t)
	createNamespace(t, c, "kubectl")
	user, err := env.Environment.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubectl, err := user.Kubectl()
	if err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(t.TempDir(), "split.yaml")
	doc := "apiVersion: mesh.trellis.io/v1alpha1\nkind: TrafficSplit\nmetadata: {name: all-zero, namespace: kubectl}\n" +
		"spec: {service: web, backends: [{service: web-v1, weight: 0}, {service: web-v2, weight: 0}]}\n"
	if err := os.WriteFile(manifest, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := kubectl.Run("apply", "-f", manifest)
	out, _ := io.ReadAll(io.MultiReader(stdout, stderr))
	if err == nil {
		t.Fatalf("kubectl apply accepted the split: %s", out)
	}
	if !bytes.Contains(out, []byte("at least one backend must have a weight above 0")) {
		t.Fatalf("kubectl printed no readable reason: %s", out)
	}
	t.Logf("kubectl apply said: %s", bytes.TrimSpace(out))
}
