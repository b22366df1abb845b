package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// TestDaemonSetModeRendersTheNodeProxy switches a Mesh to DaemonSet mode: the node proxy's ServiceAccount, RBAC
// and DaemonSet (with the manager's proxy image) appear in the control-plane namespace with the proxy
// configuration it reads; ProxiesReady follows the DaemonSet's ready pods (no DaemonSet controller runs here, the
// test writes its status) and ignores the pods the node proxy serves; switching back to Sidecar prunes all of it.
func TestDaemonSetModeRendersTheNodeProxy(t *testing.T) {
	c := startManagerWith(t, func(r *MeshReconciler) { r.ProxyImage = "trellis.io/proxy:test" })
	namespace(t, c, "dsm-a", map[string]string{"dsm": "yes"})
	mesh := &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "dsm"}, Spec: meshv1alpha1.MeshSpec{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"dsm": "yes"}},
		Proxy:             meshv1alpha1.ProxySpec{Mode: meshv1alpha1.ProxyModeDaemonSet},
	}}
	if err := c.Create(testCtx(t), mesh); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), mesh) })

	type named struct {
		obj       client.Object
		namespace string
		name      string
	}
	nodeObjects := []named{
		{&appsv1.DaemonSet{}, controlPlane, "dsm-node-proxy"},
		{&corev1.ServiceAccount{}, controlPlane, "dsm-node-proxy"},
		{&rbacv1.Role{}, controlPlane, "dsm-node-proxy"},
		{&rbacv1.RoleBinding{}, controlPlane, "dsm-node-proxy"},
		{&rbacv1.ClusterRole{}, "", "trellis-dsm-node-proxy"},
		{&rbacv1.ClusterRoleBinding{}, "", "trellis-dsm-node-proxy"},
		{&corev1.ConfigMap{}, controlPlane, "dsm-proxy-config"},
	}
	eventually(t, "the node proxy's objects", func() error {
		for _, o := range nodeObjects {
			if err := c.Get(testCtx(t), client.ObjectKey{Namespace: o.namespace, Name: o.name}, o.obj); err != nil {
				return fmt.Errorf("%T %s: %w", o.obj, o.name, err)
			}
		}
		return nil
	})
	ds := &appsv1.DaemonSet{}
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: controlPlane, Name: "dsm-node-proxy"}, ds); err != nil {
		t.Fatal(err)
	}
	pod := ds.Spec.Template.Spec
	if pod.Containers[0].Image != "trellis.io/proxy:test" || pod.ServiceAccountName != "dsm-node-proxy" ||
		!*pod.Containers[0].SecurityContext.Privileged || pod.Volumes[3].HostPath.Path != "/run/netns" {
		t.Fatalf("DaemonSet pod spec: %+v", pod)
	}
	m := meshCondition(t, c, "dsm", meshv1alpha1.ConditionProxiesReady, metav1.ConditionFalse, meshv1alpha1.ReasonProxiesNotReady)
	if msg := meta.FindStatusCondition(m.Status.Conditions, meshv1alpha1.ConditionProxiesReady).Message; !strings.Contains(msg, "DaemonSet "+controlPlane+"/dsm-node-proxy") {
		t.Errorf("ProxiesReady message %q does not name the DaemonSet", msg)
	}
	// The control plane's copy of the configuration is the one rendered into the meshed namespaces.
	eventually(t, "the same configuration in the control-plane namespace", func() error {
		var cp, ns corev1.ConfigMap
		if err := c.Get(testCtx(t), client.ObjectKey{Namespace: controlPlane, Name: "dsm-proxy-config"}, &cp); err != nil {
			return err
		}
		if err := c.Get(testCtx(t), client.ObjectKey{Namespace: "dsm-a", Name: wellknown.ProxyConfigName}, &ns); err != nil {
			return err
		}
		if h := cp.Annotations["mesh.trellis.io/config-hash"]; h == "" || h != ns.Annotations["mesh.trellis.io/config-hash"] {
			return fmt.Errorf("hashes %q and %q", h, ns.Annotations["mesh.trellis.io/config-hash"])
		}
		return nil
	})

	// A pod the node proxy serves runs no proxy of its own: it is not a proxy that is not ready.
	served := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "dsm-a", Name: "web",
		Labels:      map[string]string{wellknown.LabelProxy: wellknown.ProxyNode},
		Annotations: map[string]string{wellknown.AnnotationInjected: "dsm"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "web"}}}}
	if err := c.Create(testCtx(t), served); err != nil {
		t.Fatal(err)
	}
	served.Status.Phase = corev1.PodRunning
	if err := c.Status().Update(testCtx(t), served); err != nil {
		t.Fatal(err)
	}
	// The DaemonSet controller's report: one node, its proxy ready.
	ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: ds.Generation, DesiredNumberScheduled: 1, CurrentNumberScheduled: 1,
		UpdatedNumberScheduled: 1, NumberReady: 1, NumberAvailable: 1}
	if err := c.Status().Update(testCtx(t), ds); err != nil {
		t.Fatal(err)
	}
	m = meshCondition(t, c, "dsm", meshv1alpha1.ConditionProxiesReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	if m.Status.Proxies.Desired != 1 || m.Status.Proxies.Ready != 1 || m.Status.Proxies.Summary != "1/1" {
		t.Errorf("status.proxies %+v, want the DaemonSet's 1/1", m.Status.Proxies)
	}

	// Back to Sidecar: the node proxy and its configuration copy leave; the meshed namespace keeps its own.
	if err := c.Get(testCtx(t), client.ObjectKey{Name: "dsm"}, m); err != nil {
		t.Fatal(err)
	}
	// A merge patch, not an update: the reconciler writes the Mesh's status meanwhile, which would make an update of
	// the read version conflict.
	patch := client.MergeFrom(m.DeepCopy())
	m.Spec.Proxy.Mode = meshv1alpha1.ProxyModeSidecar
	if err := c.Patch(testCtx(t), m, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the node proxy's objects pruned", func() error {
		for _, o := range nodeObjects {
			err := c.Get(testCtx(t), client.ObjectKey{Namespace: o.namespace, Name: o.name}, o.obj)
			if err == nil && o.obj.GetDeletionTimestamp().IsZero() {
				return fmt.Errorf("%T %s still there", o.obj, o.name)
			}
			if err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
		return nil
	})
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: "dsm-a", Name: wellknown.ProxyConfigName}, &corev1.ConfigMap{}); err != nil {
		t.Fatalf("the meshed namespace lost its configuration: %v", err)
	}
	m = meshCondition(t, c, "dsm", meshv1alpha1.ConditionProxiesReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	if m.Status.Proxies.Desired != 0 {
		t.Errorf("status.proxies %+v after leaving DaemonSet mode", m.Status.Proxies)
	}
}
