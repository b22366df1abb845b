package render

import (
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// ComponentInjector labels the injection webhook configuration.
const ComponentInjector = "injector"

// InjectPath is the path of the injection webhook on the manager's webhook server.
const InjectPath = "/inject"

// InjectorName is the name of a mesh's MutatingWebhookConfiguration.
func InjectorName(m *meshv1alpha1.Mesh) string { return "trellis-" + m.Name + "-proxy-injector" }

// InjectorWebhook renders the MutatingWebhookConfiguration that sends the creation of pods in the mesh's
// namespaces to the manager's injector: namespaces the Mesh selects, except the system namespaces and the given
// excluded ones (the control plane), and pods not labelled trellis.io/inject=disabled. Its failure policy is
// Ignore: when the injector is down, pods start without a proxy rather than not at all (the Mesh's WebhookReady
// condition says so).
func InjectorWebhook(mesh *meshv1alpha1.Mesh, service types.NamespacedName, caBundle []byte, excluded []string) *admissionregistrationv1.MutatingWebhookConfiguration {
	nsSelector := &metav1.LabelSelector{}
	if mesh.Spec.NamespaceSelector != nil {
		nsSelector = mesh.Spec.NamespaceSelector.DeepCopy()
	}
	never := append([]string{"kube-system", "kube-public", "kube-node-lease"}, excluded...)
	nsSelector.MatchExpressions = append(nsSelector.MatchExpressions, metav1.LabelSelectorRequirement{
		Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: dedupe(never),
	})
	obj := &admissionregistrationv1.MutatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionregistrationv1.SchemeGroupVersion.String(), Kind: "MutatingWebhookConfiguration"},
		ObjectMeta: meta(mesh, "", InjectorName(mesh), ComponentInjector),
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "proxy-injector." + mesh.Name + ".mesh.trellis.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{
				Service:  &admissionregistrationv1.ServiceReference{Namespace: service.Namespace, Name: service.Name, Path: ptr.To(InjectPath), Port: ptr.To(int32(443))},
				CABundle: caBundle,
			},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
					Scope: ptr.To(admissionregistrationv1.NamespacedScope),
				},
			}},
			NamespaceSelector: nsSelector,
			ObjectSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: wellknown.LabelInject, Operator: metav1.LabelSelectorOpNotIn, Values: []string{wellknown.InjectDisabled},
			}}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Ignore),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			ReinvocationPolicy:      ptr.To(admissionregistrationv1.NeverReinvocationPolicy),
			TimeoutSeconds:          ptr.To(int32(10)),
			MatchPolicy:             ptr.To(admissionregistrationv1.Equivalent),
		}},
	}
	return obj
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(in))
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
