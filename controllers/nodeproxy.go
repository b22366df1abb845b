package controllers

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/render"
)

// +kubebuilder:rbac:groups=apps,resources=daemonsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles;clusterrolebindings,verbs=get;list;watch;create;update;patch;delete

var (
	daemonSetGVK          = appsv1.SchemeGroupVersion.WithKind("DaemonSet")
	serviceAccountGVK     = corev1.SchemeGroupVersion.WithKind("ServiceAccount")
	clusterRoleGVK        = rbacv1.SchemeGroupVersion.WithKind("ClusterRole")
	clusterRoleBindingGVK = rbacv1.SchemeGroupVersion.WithKind("ClusterRoleBinding")
)

// reconcileNodeProxy renders, in DaemonSet mode, the node proxy (its ServiceAccount, RBAC and DaemonSet) and the
// proxy configuration it reads in the control-plane namespace, and sets ProxiesReady from the injected sidecars and
// the DaemonSet's ready pods. The node proxy's objects are pruned in Sidecar mode, so switching modes either way
// leaves nothing behind.
func (r *MeshReconciler) reconcileNodeProxy(ctx context.Context, s *meshScope) error {
	m := s.mesh
	for _, gvk := range []schema.GroupVersionKind{daemonSetGVK, serviceAccountGVK, clusterRoleGVK, clusterRoleBindingGVK, roleGVK, roleBindingGVK} {
		s.prunable = append(s.prunable, pruneScope{gvk, render.ComponentNodeProxy})
	}
	if m.Spec.Proxy.Mode != meshv1alpha1.ProxyModeDaemonSet {
		setProxiesReady(m, s.pods, nil)
		return nil
	}
	image := m.Spec.Proxy.Image
	if image == "" {
		image = r.ProxyImage
	}
	if image == "" {
		setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionProxiesReady, false, meshv1alpha1.ReasonProxiesNotReady,
			"DaemonSet mode needs a proxy image: set spec.proxy.image or start the manager with --proxy-image")
		return nil
	}
	s.desired = append(s.desired, render.NodeProxy(m, image)...)
	for _, cm := range render.NodeProxyConfigMaps(m, s.shards, s.configHash) {
		s.desired = append(s.desired, cm)
	}
	ds := &appsv1.DaemonSet{}
	key := client.ObjectKey{Namespace: m.Spec.ControlPlaneNamespace, Name: render.NodeProxyName(m)}
	if err := r.Client.Get(ctx, key, ds); err != nil {
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("reading the node proxy DaemonSet: %w", err)
		}
		ds = &appsv1.DaemonSet{}
		ds.Namespace, ds.Name = key.Namespace, key.Name
	}
	setProxiesReady(m, s.pods, ds)
	return nil
}
