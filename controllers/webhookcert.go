package controllers

import (
	"context"
	"fmt"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// WebhookCertificate makes sure cert-manager issues the injector's serving certificate: a self-signed Issuer and a
// Certificate for the webhook Service, written to the Secret the manager mounts and reads its CA bundle from. It
// creates what is missing once, when the manager starts, and never changes existing objects: an install from
// config/default ships its own (config/certmanager), an OLM bundle cannot hold cert-manager objects and relies on this.
type WebhookCertificate struct {
	// Client creates the objects.
	Client client.Client
	// Service is the webhook Service; the Certificate names it and is created in its namespace.
	Service types.NamespacedName
	// SecretName is the Secret of the certificate. A Certificate of the namespace that already writes it is enough.
	SecretName string
	// ClusterDomain is the cluster's DNS domain, for the Service's long name. Default "cluster.local".
	ClusterDomain string
	// Log receives logs.
	Log logr.Logger
}

// WebhookIssuerSuffix ends the name of the self-signed Issuer WebhookCertificate creates: "<secret name>-selfsigned".
const WebhookIssuerSuffix = "-selfsigned"

// NeedLeaderElection is false: creating what is missing is idempotent, and every replica needs the certificate.
func (w *WebhookCertificate) NeedLeaderElection() bool { return false }

// Start ensures the objects exist, retrying with backoff (up to 30 s between attempts) until it succeeds or ctx ends.
func (w *WebhookCertificate) Start(ctx context.Context) error {
	backoff := time.Second
	for {
		err := w.Ensure(ctx)
		if err == nil {
			return nil
		}
		w.Log.Error(err, "Requesting the webhook certificate from cert-manager failed; retrying", "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// Ensure creates the Issuer and the Certificate unless a Certificate of the Service's namespace already writes
// SecretName.
func (w *WebhookCertificate) Ensure(ctx context.Context) error {
	ns := w.Service.Namespace
	var certs cmapi.CertificateList
	if err := w.Client.List(ctx, &certs, client.InNamespace(ns)); err != nil {
		return fmt.Errorf("listing Certificates in %s: %w", ns, err)
	}
	for _, c := range certs.Items {
		if c.Spec.SecretName == w.SecretName {
			w.Log.V(1).Info("The webhook certificate is requested already", "certificate", c.Name)
			return nil
		}
	}
	domain := w.ClusterDomain
	if domain == "" {
		domain = "cluster.local"
	}
	labels := map[string]string{"app.kubernetes.io/part-of": "trellis", "app.kubernetes.io/name": "trellis-webhook"}
	issuer := &cmapi.Issuer{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: w.SecretName + WebhookIssuerSuffix, Labels: labels},
		Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}},
	}
	svc := w.Service.Name + "." + ns + ".svc"
	cert := &cmapi.Certificate{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: w.SecretName, Labels: labels},
		Spec: cmapi.CertificateSpec{
			DNSNames:    []string{svc, svc + "." + domain},
			SecretName:  w.SecretName,
			Duration:    &metav1.Duration{Duration: 365 * 24 * time.Hour},
			RenewBefore: &metav1.Duration{Duration: 30 * 24 * time.Hour},
			PrivateKey: &cmapi.CertificatePrivateKey{Algorithm: cmapi.ECDSAKeyAlgorithm, Size: 256,
				RotationPolicy: cmapi.RotationPolicyAlways},
			IssuerRef: cmmeta.IssuerReference{Name: issuer.Name, Kind: cmapi.IssuerKind},
		},
	}
	for _, o := range []client.Object{issuer, cert} {
		if err := w.Client.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %T %s/%s: %w", o, ns, o.GetName(), err)
		}
	}
	w.Log.Info("Requested the webhook certificate from cert-manager", "certificate", cert.Name, "issuer", issuer.Name,
		"dnsNames", cert.Spec.DNSNames)
	return nil
}
