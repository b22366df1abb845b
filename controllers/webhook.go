package controllers

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/types"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/render"
)

// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get;list;watch;create;update;patch;delete

// Injection configures the proxy injector the reconciler registers for every Mesh.
type Injection struct {
	// Enabled turns injection on. When off, meshes report WebhookReady=False (Disabled) and Ready ignores it.
	Enabled bool
	// Service is the Service in front of the manager's webhook server (port 443).
	Service types.NamespacedName
	// CASecret is the Secret whose ca.crt signs the webhook server's certificate (cert-manager's Secret of the
	// Certificate in config/certmanager); it becomes the configuration's caBundle.
	CASecret types.NamespacedName
	// ServerStarted reports whether the webhook server serves (the webhook server's StartedChecker).
	ServerStarted func(*http.Request) error
	// ServedCA returns the CA (PEM) of the certificate the webhook server serves now (WebhookRunner.ServedCA): when
	// cert-manager renews the certificate the Secret changes at once and the server's mounted files only at the
	// kubelet's next sync, so the caBundle holds both until they agree. Nil: the Secret's CA only.
	ServedCA func() []byte
}

// reconcileWebhook registers the mesh's injector and sets WebhookReady.
func (r *MeshReconciler) reconcileWebhook(ctx context.Context, s *meshScope) error {
	m := s.mesh
	inj := r.Injection
	if !inj.Enabled {
		setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionWebhookReady, false, meshv1alpha1.ReasonDisabled,
			"Proxy injection is disabled in the manager (--enable-injection=false): label pods yourself or run trellis inject")
		return nil
	}
	secret, err := r.readSecret(ctx, inj.CASecret.Namespace, inj.CASecret.Name)
	if err != nil {
		return err
	}
	ca := secret.Data["ca.crt"]
	if len(ca) == 0 {
		setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionWebhookReady, false, meshv1alpha1.ReasonWebhookCertMissing,
			fmt.Sprintf("Secret %s has no ca.crt yet: cert-manager issues it from the Certificate of the same name in config/default "+
				"(kubectl describe certificate -n %s %s); until then pods start without a proxy", inj.CASecret, inj.CASecret.Namespace, inj.CASecret.Name))
		s.requeueAfter(webhookRetry)
		return nil
	}
	if inj.ServedCA != nil {
		ca = caBundle(ca, inj.ServedCA())
	}
	excluded := []string{m.Spec.ControlPlaneNamespace, inj.Service.Namespace}
	s.desired = append(s.desired, render.InjectorWebhook(m, inj.Service, ca, excluded))
	s.prunable = append(s.prunable, pruneScope{mutatingWebhookGVK, render.ComponentInjector})
	if inj.ServerStarted != nil {
		if err := inj.ServerStarted(nil); err != nil {
			setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionWebhookReady, false, meshv1alpha1.ReasonPending,
				"The injector's webhook server is not serving yet: "+err.Error())
			s.requeueAfter(webhookRetry)
			return nil
		}
	}
	setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionWebhookReady, true, meshv1alpha1.ReasonReady,
		fmt.Sprintf("Pods created in the mesh's namespaces get a proxy from %s%s", inj.Service, render.InjectPath))
	return nil
}

// caBundle returns the certificates of the Secret's CA followed by those of the served CA that differ, as PEM; the
// Secret's bytes unchanged when the two agree.
func caBundle(secretCA, servedCA []byte) []byte {
	current := decodePEMCerts(secretCA)
	extra := false
	for _, c := range decodePEMCerts(servedCA) {
		if !slices.ContainsFunc(current, c.Equal) {
			current, extra = append(current, c), true
		}
	}
	if !extra {
		return secretCA
	}
	return []byte(render.EncodePEM(current))
}

// webhookRetry is how soon a mesh waiting for its injector is looked at again: the manager caches no Secrets, so
// nothing else tells it when cert-manager has issued the webhook's certificate.
const webhookRetry = 5 * time.Second

var mutatingWebhookGVK = admissionregistrationv1.SchemeGroupVersion.WithKind("MutatingWebhookConfiguration")
