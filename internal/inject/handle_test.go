package inject

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// meshFunc is a MeshLookup made of a function.
type meshFunc func(ctx context.Context, namespace string) (*meshv1alpha1.Mesh, error)

func (f meshFunc) MeshForNamespace(ctx context.Context, namespace string) (*meshv1alpha1.Mesh, error) {
	return f(ctx, namespace)
}

// TestHandle covers what the API server tests cannot reach: other operations, undecodable objects, failed
// lookups and meshes that take no sidecars. Every case is allowed.
func TestHandle(t *testing.T) {
	shop := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Labels: map[string]string{wellknown.LabelInject: wellknown.InjectEnabled}}}
	namespaces := fake.NewClientBuilder().WithObjects(shop).Build()
	podJSON, err := json.Marshal(&corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "web"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// A field newer than this build's API types, which the patch must leave alone.
	newerPodJSON := []byte(strings.Replace(string(podJSON), `"spec":{`, `"spec":{"futureField":{"a":1},`, 1))
	request := func(op admissionv1.Operation, namespace string, raw []byte) admission.Request {
		return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
			UID: "1", Operation: op, Namespace: namespace,
			Kind:   metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Object: runtime.RawExtension{Raw: raw},
		}}
	}
	mesh := func(mutate func(*meshv1alpha1.Mesh)) MeshLookup {
		return meshFunc(func(context.Context, string) (*meshv1alpha1.Mesh, error) {
			m := &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
			mutate(m)
			return m, nil
		})
	}
	imagesFor := map[string]Images{"no proxy image": {ProxyInit: testImages.ProxyInit}}
	for _, tc := range []struct {
		name    string
		meshes  MeshLookup
		req     admission.Request
		patched bool
		warning string
	}{
		{"injects", mesh(func(*meshv1alpha1.Mesh) {}), request(admissionv1.Create, "shop", podJSON), true, ""},
		{"keeps unknown fields", mesh(func(*meshv1alpha1.Mesh) {}), request(admissionv1.Create, "shop", newerPodJSON), true, ""},
		{"update", mesh(func(*meshv1alpha1.Mesh) {}), request(admissionv1.Update, "shop", podJSON), false, ""},
		{"undecodable", mesh(func(*meshv1alpha1.Mesh) {}), request(admissionv1.Create, "shop", []byte("{")), false,
			"trellis: pod not injected: decoding the pod"},
		{"unknown namespace", mesh(func(*meshv1alpha1.Mesh) {}), request(admissionv1.Create, "gone", podJSON), false,
			"trellis: pod not injected: reading namespace gone"},
		{"lookup fails", meshFunc(func(context.Context, string) (*meshv1alpha1.Mesh, error) { return nil, errors.New("cache not synced") }),
			request(admissionv1.Create, "shop", podJSON), false, "trellis: pod not injected: finding the mesh of namespace shop: cache not synced"},
		{"mesh being deleted", mesh(func(m *meshv1alpha1.Mesh) {
			m.DeletionTimestamp = ptr.To(metav1.Now())
		}), request(admissionv1.Create, "shop", podJSON), false, "trellis: pod not injected: mesh default is being deleted"},
		{"daemonset mode", mesh(func(m *meshv1alpha1.Mesh) {
			m.Spec.Proxy.Mode = meshv1alpha1.ProxyModeDaemonSet
		}), request(admissionv1.Create, "shop", podJSON), true, ""},
		{"no proxy image", mesh(func(*meshv1alpha1.Mesh) {}), request(admissionv1.Create, "shop", podJSON), false,
			"trellis: pod not injected: injection parameters: no proxy image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			images, ok := imagesFor[tc.name]
			if !ok {
				images = testImages
			}
			resp := NewWebhook(namespaces, tc.meshes, images, nil).Handle(context.Background(), tc.req)
			if !resp.Allowed {
				t.Fatalf("not allowed: %+v", resp.Result)
			}
			if got := len(resp.Patches) > 0; got != tc.patched {
				t.Errorf("patched %v, want %v: %v", got, tc.patched, resp.Patches)
			}
			for _, op := range resp.Patches {
				if op.Operation != "add" {
					t.Errorf("patch operation %s %s: injection only adds", op.Operation, op.Path)
				}
			}
			if tc.warning == "" && len(resp.Warnings) > 0 ||
				tc.warning != "" && (len(resp.Warnings) != 1 || !strings.HasPrefix(resp.Warnings[0], tc.warning)) {
				t.Errorf("warnings %q, want %q", resp.Warnings, tc.warning)
			}
		})
	}
}
