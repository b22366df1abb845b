//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestManagerRequestsTheWebhookCertificate installs the way OLM does as far as the injector's certificate goes: no
// cert-manager Issuer, Certificate or Secret for it. The restarted manager requests the certificate itself,
// cert-manager issues it, the kubelet mounts it, and new pods are injected again, by a webhook configuration that
// trusts that certificate.
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
	// Only the new manager is left: a pod injected now was injected by its webhook server, with the certificate it
	// requested (the old one, still terminating, could have served the old certificate until it stopped).
	if err := env.WaitFor(ctx, 2*time.Minute, "the old manager pod to go", func(ctx context.Context) (bool, error) {
		pods, err := managerPods(ctx)
		return err == nil && len(pods) == 1 && pods[0].DeletionTimestamp == nil &&
			!pods[0].CreationTimestamp.Time.Before(start.Truncate(time.Second)), err
	}); err != nil {
		t.Fatal(err)
	}
	ns := env.Namespace(t, "whcert", map[string]string{"trellis.io/inject": "enabled"})
	// The injector fails open (failurePolicy Ignore): until its server serves, pods start without a proxy. Create
	// pods until one is injected; the kubelet mounts a Secret created after the manager started at its next sync.
	var injectedAfter time.Duration
	for attempt := 0; ; attempt++ {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("probe-%d", attempt)},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: echoImage, ImagePullPolicy: corev1.PullIfNotPresent}}}}
		if err := env.Client.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		if injected(pod) {
			injectedAfter = time.Since(start)
			break
		}
		_ = env.Client.Delete(ctx, pod)
		if time.Since(start) > 4*time.Minute {
			t.Fatal("no pod was injected within 4 minutes of the manager's restart")
		}
		time.Sleep(2 * time.Second)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfigurationList
	if err := env.Client.List(ctx, &mwc); err != nil {
		t.Fatal(err)
	}
	var issued corev1.Secret
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: in.Namespace, Name: secret}, &issued); err != nil {
		t.Fatal(err)
	}
	for _, c := range mwc.Items {
		for _, w := range c.Webhooks {
			if w.ClientConfig.Service != nil && w.ClientConfig.Service.Namespace == in.Namespace &&
				!bytes.Contains(w.ClientConfig.CABundle, bytes.TrimSpace(issued.Data["ca.crt"])) {
				t.Errorf("webhook %s/%s does not trust the manager's certificate", c.Name, w.Name)
			}
		}
	}
	t.Logf("pods are injected again %v after the manager's restart (the kubelet mounts a Secret created later at its next sync)",
		injectedAfter.Round(time.Second))
}
