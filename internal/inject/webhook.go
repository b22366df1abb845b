package inject

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
)

// WebhookPath is the path the injection webhook is served on; the MutatingWebhookConfiguration points at it.
const WebhookPath = "/inject"

// warningPrefix starts every warning the webhook returns, so users know where it comes from.
const warningPrefix = "trellis: pod not injected: "

// Webhook is the mutating admission handler that injects the proxy into Pods as they are created. It never
// rejects a pod: whatever goes wrong, the pod is admitted unchanged with a warning in the response and a log line.
// Its MutatingWebhookConfiguration should have failurePolicy Ignore, so pods start unmeshed while the webhook is
// down.
type Webhook struct {
	namespaces client.Reader
	meshes     MeshLookup
	images     Images
	decoder    admission.Decoder
}

var _ admission.Handler = (*Webhook)(nil)

// NewWebhook returns the injection handler. namespaces reads Namespaces (the manager's cached client), meshes finds
// a namespace's Mesh, images are the proxy and proxy-init images the manager was started with, and scheme decodes
// Pods (nil: client-go's scheme).
func NewWebhook(namespaces client.Reader, meshes MeshLookup, images Images, scheme *runtime.Scheme) *Webhook {
	if scheme == nil {
		scheme = clientgoscheme.Scheme
	}
	return &Webhook{namespaces: namespaces, meshes: meshes, images: images, decoder: admission.NewDecoder(scheme)}
}

// Handle implements admission.Handler for Pod CREATE requests; anything else is allowed unchanged.
func (w *Webhook) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create || req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" {
		return admission.Allowed("not a pod creation")
	}
	pod := &corev1.Pod{}
	if err := w.decoder.Decode(req, pod); err != nil {
		ctx = ctrl.LoggerInto(ctx, ctrl.LoggerFrom(ctx).WithValues("namespace", req.Namespace))
		return notInjected(ctx, fmt.Errorf("decoding the pod: %w", err))
	}
	// Pods made from templates have only a generateName when they are admitted.
	name := pod.Name
	if name == "" {
		name = pod.GenerateName + "<generated>"
	}
	namespace := req.Namespace
	if namespace == "" {
		namespace = pod.Namespace
	}
	log := ctrl.LoggerFrom(ctx).WithValues("pod", klog.KRef(namespace, name))
	ctx = ctrl.LoggerInto(ctx, log)

	mesh, reason, err := w.decide(ctx, namespace, pod)
	if err != nil {
		return notInjected(ctx, err)
	}
	if mesh == nil {
		log.V(1).Info("Pod not injected", "reason", reason)
		return admission.Allowed(reason)
	}
	before, err := json.Marshal(pod)
	if err != nil {
		return notInjected(ctx, fmt.Errorf("encoding the pod: %w", err))
	}
	changed, err := InjectPodSpec(&pod.ObjectMeta, &pod.Spec, ParamsFromMesh(mesh, w.images))
	if err != nil {
		return notInjected(ctx, err)
	}
	if !changed {
		log.V(1).Info("Pod already injected")
		return admission.Allowed("already injected")
	}
	after, err := json.Marshal(pod)
	if err != nil {
		return notInjected(ctx, fmt.Errorf("encoding the injected pod: %w", err))
	}
	// The patch goes from the pod as sent to the pod as sent plus the injection, so that fields unknown to this
	// build's API types are kept rather than removed.
	injected, err := ApplyChange(req.Object.Raw, before, after, corev1.Pod{})
	if err != nil {
		return notInjected(ctx, err)
	}
	log.Info("Injected proxy", "mesh", mesh.Name, "reason", reason)
	return admission.PatchResponseFromRaw(req.Object.Raw, injected)
}

// decide returns the Mesh whose proxy the pod gets, or nil and the reason it gets none. An error is a problem
// worth a warning: the pod asked for a proxy and cannot have one.
func (w *Webhook) decide(ctx context.Context, namespace string, pod *corev1.Pod) (*meshv1alpha1.Mesh, string, error) {
	ns := &corev1.Namespace{}
	if err := w.namespaces.Get(ctx, client.ObjectKey{Name: namespace}, ns); err != nil {
		return nil, "", fmt.Errorf("reading namespace %s: %w", namespace, err)
	}
	mesh, err := w.meshes.MeshForNamespace(ctx, namespace)
	if err != nil {
		return nil, "", fmt.Errorf("finding the mesh of namespace %s: %w", namespace, err)
	}
	controlPlane := ""
	if mesh != nil {
		controlPlane = orDefault(mesh.Spec.ControlPlaneNamespace, DefaultControlPlaneNamespace)
	}
	ok, reason := ShouldInject(ns, &pod.ObjectMeta, controlPlane)
	switch {
	case !ok:
		return nil, reason, nil
	case mesh == nil:
		return nil, "", fmt.Errorf("%s, but namespace %s belongs to no Mesh (a Mesh's namespaceSelector must select it; "+
			"system and control-plane namespaces belong to none)", reason, namespace)
	case !mesh.DeletionTimestamp.IsZero():
		return nil, "", fmt.Errorf("mesh %s is being deleted", mesh.Name)
	}
	if err := CheckNamespace(ns); err != nil {
		return nil, "", err
	}
	return mesh, reason, nil
}

// notInjected admits the pod unchanged with a warning and logs why.
func notInjected(ctx context.Context, err error) admission.Response {
	log := ctrl.LoggerFrom(ctx)
	if errors.Is(err, ErrHostNetwork) {
		log.Info("Pod not injected", "reason", err.Error())
	} else {
		log.Error(err, "Pod not injected")
	}
	return admission.Allowed("not injected").WithWarnings(warningPrefix + err.Error())
}
