package controllers

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	"github.com/trellis-mesh/trellis/internal/render"
)

// TestInjectorRegistered turns injection on with a real webhook server whose certificate cert-manager issues: the
// Mesh waits for the certificate (WebhookReady=False, WebhookCertMissing), then registers its injector with the CA
// bundle and reports WebhookReady once the server serves.
func TestInjectorRegistered(t *testing.T) {
	certDir := t.TempDir()
	ca := types.NamespacedName{Namespace: controlPlane, Name: "webhook-cert"}
	runner := &WebhookRunner{CertDir: certDir, Server: webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: freePort(t), CertDir: certDir})}
	c := startManagerWith(t, func(r *MeshReconciler) {
		r.Injection = Injection{
			Enabled:       true,
			Service:       types.NamespacedName{Namespace: controlPlane, Name: "trellis-webhook"},
			CASecret:      ca,
			ServerStarted: runner.StartedChecker,
		}
	}, runner)
	namespace(t, c, "wh-app", map[string]string{"wh": "yes"})
	mesh := createMesh(t, c, "wh", map[string]string{"wh": "yes"})

	got := meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionWebhookReady, metav1.ConditionFalse, meshv1alpha1.ReasonWebhookCertMissing)
	if msg := meta.FindStatusCondition(got.Status.Conditions, meshv1alpha1.ConditionWebhookReady).Message; !strings.Contains(msg, "kubectl describe certificate") {
		t.Errorf("message not actionable: %q", msg)
	}
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionReady, metav1.ConditionFalse, meshv1alpha1.ReasonWebhookCertMissing)

	// What config/certmanager does in a cluster: a self-signed Issuer and the webhook's Certificate.
	create(t, c,
		&cmapi.Issuer{ObjectMeta: metav1.ObjectMeta{Namespace: controlPlane, Name: "webhook-selfsigned"},
			Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}}},
		&cmapi.Certificate{ObjectMeta: metav1.ObjectMeta{Namespace: controlPlane, Name: "webhook-cert"}, Spec: cmapi.CertificateSpec{
			DNSNames: []string{"trellis-webhook.trellis-system.svc", "127.0.0.1"}, SecretName: "webhook-cert",
			IPAddresses: []string{"127.0.0.1"},
			IssuerRef:   cmmeta.IssuerReference{Name: "webhook-selfsigned", Kind: cmapi.IssuerKind},
		}},
	)
	secret := &corev1.Secret{}
	eventually(t, "the webhook certificate", func() error {
		if err := c.Get(testCtx(t), ca, secret); err != nil {
			return err
		}
		if len(secret.Data["ca.crt"]) == 0 {
			return fmt.Errorf("no ca.crt yet")
		}
		return nil
	})
	// The kubelet would project the Secret into the manager's volume.
	for _, k := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(certDir, k), secret.Data[k], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionWebhookReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)

	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := c.Get(testCtx(t), client.ObjectKey{Name: render.InjectorName(mesh)}, mwc); err != nil {
		t.Fatal(err)
	}
	wh := mwc.Webhooks[0]
	if !bytes.Equal(wh.ClientConfig.CABundle, secret.Data["ca.crt"]) {
		t.Error("caBundle is not the webhook certificate's CA")
	}
	if *wh.FailurePolicy != admissionregistrationv1.Ignore || wh.ClientConfig.Service.Name != "trellis-webhook" || *wh.ClientConfig.Service.Path != render.InjectPath {
		t.Errorf("webhook: %+v", wh)
	}
	if wh.NamespaceSelector.MatchLabels["wh"] != "yes" {
		t.Errorf("namespaceSelector does not follow the Mesh: %+v", wh.NamespaceSelector)
	}
	excluded := wh.NamespaceSelector.MatchExpressions[len(wh.NamespaceSelector.MatchExpressions)-1]
	if excluded.Operator != metav1.LabelSelectorOpNotIn || !contains(excluded.Values, "kube-system") || !contains(excluded.Values, controlPlane) {
		t.Errorf("system and control-plane namespaces are not excluded: %+v", excluded)
	}
	if len(mwc.OwnerReferences) != 1 || mwc.OwnerReferences[0].Name != mesh.Name {
		t.Errorf("not owned by the Mesh: %+v", mwc.OwnerReferences)
	}
	// The webhook server really serves TLS with the issued certificate.
	if err := runner.StartedChecker(nil); err != nil {
		t.Fatal(err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestCABundleCoversTheServedCertificate checks the caBundle while cert-manager renews the webhook certificate: the
// Secret's new CA and the CA of the files the server still serves are both trusted; once they agree, the bundle is the
// Secret's bytes.
func TestCABundleCoversTheServedCertificate(t *testing.T) {
	pemOf := func(ca *identitytest.CA) []byte { return []byte(render.EncodePEM([]*x509.Certificate{ca.Cert})) }
	renewed, served := pemOf(identitytest.NewRoot(t, "renewed")), pemOf(identitytest.NewRoot(t, "served"))
	if got := caBundle(renewed, renewed); !bytes.Equal(got, renewed) {
		t.Errorf("same CA: bundle %q, want the Secret's bytes", got)
	}
	if got := caBundle(renewed, nil); !bytes.Equal(got, renewed) {
		t.Errorf("no served CA: bundle %q, want the Secret's bytes", got)
	}
	got := decodePEMCerts(caBundle(renewed, served))
	if len(got) != 2 || got[0].Subject.CommonName != "renewed" || got[1].Subject.CommonName != "served" {
		t.Errorf("renewal under way: bundle of %d certificates, want the renewed CA then the served one", len(got))
	}
}
