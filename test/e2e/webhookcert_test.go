//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/test/e2e/framework"
)

// TestManagerRequestsTheWebhookCertificate installs the way OLM does as far as the injector's certificate goes: no
// cert-manager Issuer, Certificate or Secret for it. The restarted manager requests the certificate itself,
// cert-manager issues it, the kubelet mounts it, the Mesh reports WebhookReady again and new pods are injected.
func TestManagerRequestsTheWebhookCertificate(t *testing.T) {
	ctx := context.Background()
	ensureMesh(ctx, t)
	env.CollectOnFailure(t)
	in := requireTrellis(t)
	const secret = "trellis-webhook-cert"
	for _, o := range []client.Object{
		&cmv1.Certificate{ObjectMeta: metav1.ObjectMeta{Namespace: in.Namespace, Name: secret}},
		&cmv1.Issuer{ObjectMeta: metav1.ObjectMeta{Namespace: in.Namespace, Name: "trellis-webhook-selfsigned"}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: in.Namespace, Name: secret}},
	} {
		if err := env.Client.Delete(ctx, o); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if _, err := env.Kubectl(ctx, "-n", in.Namespace, "rollout", "restart", "deploy/"+in.Deployment); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Kubectl(ctx, "-n", in.Namespace, "rollout", "status", "deploy/"+in.Deployment, "--timeout=180s"); err != nil {
		t.Fatal(err)
	}

	var cert cmv1.Certificate
	if err := env.WaitFor(ctx, 2*time.Minute, "the manager's webhook Certificate to be issued", func(ctx context.Context) (bool, error) {
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: in.Namespace, Name: secret}, &cert); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return certReady(&cert), nil
	}); err != nil {
		t.Fatal(err)
	}
	if cert.Labels["app.kubernetes.io/part-of"] != "trellis" || cert.Spec.IssuerRef.Name != secret+"-selfsigned" {
		t.Errorf("the webhook Certificate is not the manager's: labels %v, issuer %s", cert.Labels, cert.Spec.IssuerRef.Name)
	}
	mesh := &unstructured.Unstructured{}
	mesh.SetGroupVersionKind(schema.GroupVersionKind{Group: "mesh.trellis.io", Version: "v1alpha1", Kind: "Mesh"})
	mesh.SetName("default")
	// Ready again since the restart: the condition turned True after it (the new manager reports False until its
	// webhook server serves).
	if err := env.WaitFor(ctx, 4*time.Minute, "the Mesh WebhookReady again", func(ctx context.Context) (bool, error) {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(mesh), mesh); err != nil {
			return false, err
		}
		c, ok := framework.Condition(mesh, "WebhookReady")
		if !ok || c["status"] != "True" {
			return false, nil
		}
		at, err := time.Parse(time.RFC3339, fmt.Sprint(c["lastTransitionTime"]))
		return err == nil && !at.Before(start.Truncate(time.Second)), nil
	}); err != nil {
		t.Fatalf("%v (conditions: %v)", err, framework.Conditions(mesh))
	}
	t.Logf("the injector serves again %v after the manager's restart (the kubelet mounts a Secret created later at its next sync)",
		time.Since(start).Round(time.Second))

	ns := env.Namespace(t, "whcert", map[string]string{"trellis.io/inject": "enabled"})
	deployEcho(ctx, t, ns, "echo", 1)
	for _, p := range podsOf(ctx, t, ns, "echo") {
		if !injected(&p) {
			t.Errorf("pod %s was not injected with the manager's webhook certificate", p.Name)
		}
	}
}
