//go:build e2e

package e2e

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/test/e2e/framework"
)

// The smoke suite: the test ground itself works (node, pods from locally built images, Services, DNS,
// Prometheus, cert-manager), and Trellis installs, answers a Mesh and gets its identity chain from cert-manager.

func TestNodeReadyThroughHostKubeconfig(t *testing.T) {
	ctx := context.Background()
	env.CollectOnFailure(t)
	// exactly what a user types on the host
	out, err := env.Run(ctx, env.KubectlPath, "--kubeconfig", env.Kubeconfig, "get", "nodes", "--no-headers")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one node, kubectl get nodes says:\n%s", out)
	}
	if f := strings.Fields(lines[0]); len(f) < 2 || f[0] != framework.NodeName || f[1] != "Ready" {
		t.Fatalf("want node %s Ready, kubectl get nodes says:\n%s", framework.NodeName, out)
	}
}

func TestPodReachesServiceThroughClusterIPAndDNS(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "smoke-svc", nil)
	clusterIP := deployEcho(ctx, t, ns, "echo", 2)

	for name, url := range map[string]string{
		"by-dns":       fmt.Sprintf("http://echo.%s.svc.cluster.local/from-pod", ns),
		"by-clusterip": fmt.Sprintf("http://%s/from-pod", clusterIP),
	} {
		out := runClient(ctx, t, ns, "client-"+name, url)
		var r struct{ Pod, Namespace, Path string }
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%s: client got %q: %v", name, out, err)
		}
		if !strings.HasPrefix(r.Pod, "echo-") || r.Namespace != ns || r.Path != "/from-pod" {
			t.Errorf("%s: answer not from an echo pod of %s: %+v", name, ns, r)
		}
	}

	// the host reaches ClusterIPs too (routes through the node)
	code, body, err := framework.HTTPGet(ctx, "http://"+clusterIP+"/from-host")
	if err != nil || code != 200 || !strings.Contains(string(body), `"path":"/from-host"`) {
		t.Errorf("host -> ClusterIP %s: %d %s %v", clusterIP, code, body, err)
	}
}

func TestPrometheusScrapesAnnotatedPods(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "smoke-prom", nil)
	clusterIP := deployEcho(ctx, t, ns, "echo", 1)
	const requests = 7
	for i := 0; i < requests; i++ {
		if code, _, err := framework.HTTPGet(ctx, "http://"+clusterIP+"/"); err != nil || code != 200 {
			t.Fatalf("request %d: %d %v", i, code, err)
		}
	}
	query := fmt.Sprintf(`echo_requests_total{namespace=%q}`, ns)
	err := env.WaitFor(ctx, 90*time.Second, "Prometheus to scrape "+query+" >= 7", func(ctx context.Context) (bool, error) {
		samples, err := framework.PromQuery(ctx, query)
		if err != nil {
			return false, err
		}
		return len(samples) == 1 && samples[0].Value >= requests && strings.HasPrefix(samples[0].Labels["pod"], "echo-"), nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// selfSignedChain is a self-signed Issuer, a root CA Certificate, a CA Issuer from it and a leaf: the shape of
// the trust anchor -> identity issuer chain a Mesh asks cert-manager for.
const selfSignedChain = `
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: selfsigned}
spec: {selfSigned: {}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: root-ca}
spec:
  isCA: true
  commonName: smoke root
  secretName: root-ca
  privateKey: {algorithm: ECDSA, size: 256}
  duration: 87600h
  issuerRef: {name: selfsigned, kind: Issuer}
---
apiVersion: cert-manager.io/v1
kind: Issuer
metadata: {name: root-ca}
spec: {ca: {secretName: root-ca}}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: leaf}
spec:
  commonName: leaf.smoke.test
  dnsNames: [leaf.smoke.test]
  secretName: leaf
  privateKey: {algorithm: ECDSA, size: 256}
  duration: 48h
  renewBefore: 25h
  issuerRef: {name: root-ca, kind: Issuer}
`

func TestCertManagerIssuesSelfSignedCertificates(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "smoke-certs", nil)
	objs, err := env.ApplyYAML(ctx, ns, selfSignedChain)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() != "Certificate" {
			continue
		}
		if _, err := env.WaitCondition(ctx, o, "Ready", "True", 90*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	root := secretCert(ctx, t, ns, "root-ca")
	leaf := secretCert(ctx, t, ns, "leaf")
	if !root.IsCA || root.Subject.CommonName != "smoke root" || root.CheckSignatureFrom(root) != nil {
		t.Errorf("root-ca is not a self-signed CA: CA=%v subject=%s", root.IsCA, root.Subject)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "leaf.smoke.test"}); err != nil {
		t.Errorf("leaf does not verify against root-ca for leaf.smoke.test: %v", err)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 47*time.Hour || d > 49*time.Hour {
		t.Errorf("leaf lifetime %s, want 48h", d)
	}
}

func TestCertManagerWebhookRejectsInvalidCertificate(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "smoke-webhook", nil)
	_, err := env.ApplyYAML(ctx, ns, `
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: invalid}
spec:
  secretName: invalid
  issuerRef: {name: selfsigned}
`)
	if err == nil || !strings.Contains(err.Error(), "webhook.cert-manager.io") {
		t.Fatalf("want the cert-manager webhook to deny a Certificate without names, got %v", err)
	}
}

func secretCert(ctx context.Context, t *testing.T, ns, name string) *x509.Certificate {
	t.Helper()
	var s corev1.Secret
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &s); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(s.Data["tls.crt"])
	if block == nil {
		t.Fatalf("secret %s/%s: no PEM in tls.crt", ns, name)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func requireTrellis(t *testing.T) *framework.Install {
	t.Helper()
	if env.Trellis == nil {
		t.Skip("config/default does not exist yet: Trellis was not installed")
	}
	return env.Trellis
}

func TestManagerBecomesReady(t *testing.T) {
	in := requireTrellis(t)
	env.CollectOnFailure(t)
	if in.Deployment == "" {
		t.Fatal("config/default renders no manager Deployment")
	}
	if err := env.WaitDeploymentAvailable(context.Background(), in.Namespace, in.Deployment, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// TestMeshSample applies config/samples' Mesh (as unstructured objects, so the suite follows API changes) and
// checks what the reconciler makes of it.
func TestMeshSample(t *testing.T) {
	in := requireTrellis(t)
	ctx := context.Background()
	env.CollectOnFailure(t)
	if err := env.WaitDeploymentAvailable(ctx, in.Namespace, in.Deployment, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	objs, err := env.ApplyFile(ctx, "", filepath.Join(env.Root, "config", "samples", "mesh_v1alpha1_mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	mesh := objs[0]
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), mesh) })

	t.Run("GetsConditions", func(t *testing.T) {
		var got *unstructured.Unstructured
		err := env.WaitFor(ctx, 2*time.Minute, "Mesh "+mesh.GetName()+" to get status conditions", func(ctx context.Context) (bool, error) {
			got = mesh.DeepCopy()
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(mesh), got); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			ready, ok := framework.Condition(got, "Ready")
			return ok && ready["observedGeneration"] != nil, nil
		})
		if err != nil {
			t.Fatalf("%v; conditions: %v", err, framework.Conditions(got))
		}
		for _, c := range framework.Conditions(got) {
			if c["reason"] == "" || c["reason"] == nil {
				t.Errorf("condition %v has no reason", c["type"])
			}
			t.Logf("condition %v=%v reason=%v: %v", c["type"], c["status"], c["reason"], c["message"])
		}
	})

	// The Mesh asks cert-manager for its identity chain: a trust anchor (self-signed CA) and an identity issuer
	// (CA, 48h in the sample) signed by it, in the control-plane namespace. cert-manager must issue both.
	t.Run("IdentityCertificatesIssued", func(t *testing.T) {
		got, err := env.WaitCondition(ctx, mesh, "IdentityReady", "True", 2*time.Minute)
		if err != nil {
			t.Fatalf("%v; conditions: %v", err, framework.Conditions(got))
		}
		ns, _, _ := unstructured.NestedString(mesh.Object, "spec", "controlPlaneNamespace")
		var certs cmv1.CertificateList
		if err := env.Client.List(ctx, &certs, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		var anchor, issuer *x509.Certificate
		for _, c := range certs.Items {
			if !certReady(&c) {
				t.Errorf("Certificate %s/%s is not Ready", ns, c.Name)
				continue
			}
			x := secretCert(ctx, t, ns, c.Spec.SecretName)
			switch {
			case x.IsCA && x.CheckSignatureFrom(x) == nil:
				anchor = x
			case x.IsCA:
				issuer = x
			}
		}
		if anchor == nil || issuer == nil {
			t.Fatalf("want a self-signed trust anchor and a CA identity issuer in %s, got %d Certificates", ns, len(certs.Items))
		}
		if err := issuer.CheckSignatureFrom(anchor); err != nil {
			t.Errorf("identity issuer is not signed by the trust anchor: %v", err)
		}
		if d := issuer.NotAfter.Sub(issuer.NotBefore); d < 47*time.Hour || d > 49*time.Hour {
			t.Errorf("identity issuer lifetime %s, want the sample's 48h", d)
		}
	})
}

func certReady(c *cmv1.Certificate) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == cmv1.CertificateConditionReady {
			return cond.Status == cmmeta.ConditionTrue
		}
	}
	return false
}
