package controllers

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/identity/workload"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// TestIdentityServiceIssuesWithTheMeshChain runs the manager's identity service for a Mesh whose chain the real
// cert-manager issued, and a workload client that holds a real projected-style token: the workload gets a
// certificate for its ServiceAccount that verifies under the trust bundle the reconciler wrote.
func TestIdentityServiceIssuesWithTheMeshChain(t *testing.T) {
	c := startManager(t)
	ns := "idsvc-app"
	namespace(t, c, ns, map[string]string{"idsvc": "yes"})
	create(t, c, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}})
	mesh := createMesh(t, c, "idsvc", map[string]string{"idsvc": "yes"})
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionIdentityReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)

	clientset := kubernetes.NewForConfigOrDie(env.Config)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	svc := &IdentityService{Reader: c, Clientset: clientset, MeshName: mesh.Name, Addr: addr}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("identity service: %v", err)
		}
	})
	eventually(t, "identity service ready", func() error { return svc.ReadyCheck(nil) })

	dir := t.TempDir()
	tok, err := clientset.CoreV1().ServiceAccounts(ns).CreateToken(testCtx(t), "web", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{wellknown.IdentityAudience}, ExpirationSeconds: ptr.To(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile, bundleFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca-bundle.crt")
	if err := os.WriteFile(tokenFile, []byte(tok.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	var bundle []*x509.Certificate
	eventually(t, "trust bundle", func() (err error) {
		bundle, err = bundleOf(t, c, ns)
		return err
	})
	cm := &corev1.ConfigMap{}
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: ns, Name: wellknown.TrustBundleName}, cm); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bundleFile, []byte(cm.Data[wellknown.TrustBundleKey]), 0o600); err != nil {
		t.Fatal(err)
	}

	id, err := spiffe.FromServiceAccount("cluster.local", ns, "web")
	if err != nil {
		t.Fatal(err)
	}
	wl, err := workload.New(workload.Options{
		ID: id, Addr: addr, ServerName: wellknown.IdentityServiceName + "." + controlPlane + ".svc",
		TokenFile: tokenFile, TrustBundleFile: bundleFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	wdone := make(chan error, 1)
	go func() { wdone <- wl.Run(wctx) }()
	if err := wl.WaitReady(wctx); err != nil {
		t.Fatalf("the workload got no certificate: %v", err)
	}
	leaf := wl.Certificate().Leaf
	if leaf == nil {
		leaf, err = x509.ParseCertificate(wl.Certificate().Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Fatalf("leaf URIs %v, want %s", leaf.URIs, id)
	}
	inter := x509.NewCertPool()
	for _, der := range wl.Certificate().Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(ic)
	}
	roots := x509.NewCertPool()
	for _, b := range bundle {
		roots.AddCert(b)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the workload certificate does not verify under the mesh's trust bundle: %v", err)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got < 23*time.Hour || got > 25*time.Hour {
		t.Errorf("leaf lifetime %v, want about the Mesh's 24h", got)
	}
	wcancel()
	if err := <-wdone; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("workload: %v", err)
	}
}
