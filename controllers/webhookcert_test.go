package controllers

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"slices"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestWebhookCertificateRequested checks, with real cert-manager, what an OLM install relies on: with no
// Certificate for the webhook's Secret, the manager creates a self-signed Issuer and the Certificate, and cert-manager
// issues a serving certificate for the webhook Service into the Secret. A second start changes nothing, and a
// namespace whose Certificate already writes the Secret (an install from config/default) gets nothing new.
func TestWebhookCertificateRequested(t *testing.T) {
	c := startManager(t)
	ns := "whcert"
	namespace(t, c, ns, nil)
	w := &WebhookCertificate{Client: c, Service: types.NamespacedName{Namespace: ns, Name: "trellis-webhook"},
		SecretName: "trellis-webhook-cert", Log: logr.Discard()}
	for range 2 {
		if err := w.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	var certs cmapi.CertificateList
	if err := c.List(testCtx(t), &certs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(certs.Items) != 1 || certs.Items[0].Spec.IssuerRef.Name != "trellis-webhook-cert"+WebhookIssuerSuffix {
		t.Fatalf("Certificates after two starts: %+v", certs.Items)
	}
	secret := &corev1.Secret{}
	eventually(t, "the webhook certificate issued", func() error {
		if err := c.Get(testCtx(t), client.ObjectKey{Namespace: ns, Name: "trellis-webhook-cert"}, secret); err != nil {
			return err
		}
		if len(secret.Data["tls.crt"]) == 0 || len(secret.Data["ca.crt"]) == 0 {
			return fmt.Errorf("not issued yet")
		}
		return nil
	})
	block, _ := pem.Decode(secret.Data["tls.crt"])
	if block == nil {
		t.Fatal("tls.crt holds no PEM block")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"trellis-webhook.whcert.svc", "trellis-webhook.whcert.svc.cluster.local"}
	if !slices.Equal(leaf.DNSNames, want) {
		t.Errorf("DNS names %v, want %v", leaf.DNSNames, want)
	}
	if err := leaf.VerifyHostname("trellis-webhook.whcert.svc"); err != nil {
		t.Error(err)
	}

	// A namespace whose own Certificate writes the Secret under another name keeps it, alone.
	own := "whcert-own"
	namespace(t, c, own, nil)
	create(t, c, &cmapi.Certificate{ObjectMeta: metav1.ObjectMeta{Namespace: own, Name: "shipped"}, Spec: cmapi.CertificateSpec{
		DNSNames: []string{"trellis-webhook.whcert-own.svc"}, SecretName: "trellis-webhook-cert",
		IssuerRef: cmmeta.IssuerReference{Name: "shipped-issuer", Kind: cmapi.IssuerKind},
	}})
	w.Service.Namespace = own
	if err := w.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.List(testCtx(t), &certs, client.InNamespace(own)); err != nil {
		t.Fatal(err)
	}
	var issuers cmapi.IssuerList
	if err := c.List(testCtx(t), &issuers, client.InNamespace(own)); err != nil {
		t.Fatal(err)
	}
	if len(certs.Items) != 1 || certs.Items[0].Name != "shipped" || len(issuers.Items) != 0 {
		t.Errorf("objects added beside an existing Certificate: %d Certificates, %d Issuers", len(certs.Items), len(issuers.Items))
	}
}
