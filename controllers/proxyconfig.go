package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/render"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// +kubebuilder:rbac:groups="",resources=services;pods,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete

var (
	roleGVK        = rbacv1.SchemeGroupVersion.WithKind("Role")
	roleBindingGVK = rbacv1.SchemeGroupVersion.WithKind("RoleBinding")
)

// proxyConfigSnapshot reads what the proxy configuration is rendered from: the Services, EndpointSlices, pods,
// MeshPolicies and TrafficSplits of the mesh's namespaces.
type proxyConfigSnapshot struct {
	render.ProxySnapshot
	policies []meshv1alpha1.MeshPolicy
	splits   []meshv1alpha1.TrafficSplit
	routes   []gatewayv1.HTTPRoute
	pods     []corev1.Pod
}

func (r *MeshReconciler) readProxySnapshot(ctx context.Context, s *meshScope) (*proxyConfigSnapshot, error) {
	snap := &proxyConfigSnapshot{ProxySnapshot: render.ProxySnapshot{
		Mesh: s.mesh, ClusterDomain: r.clusterDomain(), Pods: map[types.NamespacedName]render.PodInfo{},
	}}
	for _, ns := range s.namespaces {
		in := client.InNamespace(ns)
		var svcs corev1.ServiceList
		var slices discoveryv1.EndpointSliceList
		var pods corev1.PodList
		var policies meshv1alpha1.MeshPolicyList
		var splits meshv1alpha1.TrafficSplitList
		for _, list := range []client.ObjectList{&svcs, &slices, &pods, &policies, &splits} {
			if err := r.Client.List(ctx, list, in); err != nil {
				return nil, fmt.Errorf("listing %T in %s: %w", list, ns, err)
			}
		}
		snap.Services = append(snap.Services, svcs.Items...)
		snap.EndpointSlices = append(snap.EndpointSlices, slices.Items...)
		for i := range pods.Items {
			p := &pods.Items[i]
			snap.Pods[types.NamespacedName{Namespace: p.Namespace, Name: p.Name}] = render.PodInfo{
				ServiceAccount: p.Spec.ServiceAccountName,
				Meshed:         p.Annotations[wellknown.AnnotationInjected] != "",
			}
		}
		routes, err := r.listHTTPRoutes(ctx, ns)
		if err != nil {
			return nil, err
		}
		snap.routes = append(snap.routes, routes...)
		snap.pods = append(snap.pods, pods.Items...)
		snap.policies = append(snap.policies, policies.Items...)
		snap.splits = append(snap.splits, splits.Items...)
	}
	return snap, nil
}

// reconcileProxyConfig renders the proxy configuration into every meshed namespace, records which MeshPolicies
// and TrafficSplits are in force in their status, and sets ConfigReady and status.configHash.
func (r *MeshReconciler) reconcileProxyConfig(ctx context.Context, s *meshScope) error {
	m := s.mesh
	snap, err := r.readProxySnapshot(ctx, s)
	if err != nil {
		return err
	}
	s.pods = snap.pods
	meshed := map[string]bool{}
	for _, ns := range s.namespaces {
		meshed[ns] = true
	}
	routeVerdicts := render.EvaluateHTTPRoutes(snap.routes, meshed, snap.Services)
	for _, rt := range snap.routes {
		if routeVerdicts[client.ObjectKeyFromObject(&rt)].Accepted {
			snap.HTTPRoutes = append(snap.HTTPRoutes, rt)
		}
	}
	routed := render.RoutedServices(snap.HTTPRoutes)
	policyVerdicts := render.EvaluatePolicies(snap.policies, meshed, snap.Services, routed)
	splitVerdicts := render.EvaluateSplits(snap.splits, meshed, snap.Services, routed)
	for _, p := range snap.policies {
		if v := policyVerdicts[client.ObjectKeyFromObject(&p)]; v.Accepted && v.ResolvedRefs {
			snap.Policies = append(snap.Policies, p)
		}
	}
	for _, sp := range snap.splits {
		if splitVerdicts[client.ObjectKeyFromObject(&sp)].Accepted {
			snap.Splits = append(snap.Splits, sp)
		}
	}
	if err := r.writePolicyStatuses(ctx, snap.policies, policyVerdicts); err != nil {
		return err
	}
	if err := r.writeSplitStatuses(ctx, snap.splits, splitVerdicts); err != nil {
		return err
	}
	if err := r.writeHTTPRouteStatuses(ctx, snap.routes, routeVerdicts); err != nil {
		return err
	}
	if err := r.reportUnmeshed(ctx, s); err != nil {
		return err
	}

	cfg := render.ProxyConfig(&snap.ProxySnapshot)
	shards, hash, err := render.EncodeProxyConfig(cfg)
	if err != nil {
		// The ConfigMaps of the last good configuration stay in place: nothing is rendered, nothing pruned.
		setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionConfigReady, false, meshv1alpha1.ReasonConfigTooLarge, err.Error())
		r.event(m, corev1.EventTypeWarning, meshv1alpha1.ReasonConfigTooLarge, err.Error())
		return nil
	}
	for _, ns := range s.namespaces {
		for _, cm := range render.ProxyConfigMaps(m, ns, shards, hash) {
			s.desired = append(s.desired, cm)
		}
		s.desired = append(s.desired, render.ProxyConfigReader(m, ns)...)
	}
	s.prunable = append(s.prunable, pruneScope{configMapGVK, render.ComponentProxyConfig},
		pruneScope{roleGVK, render.ComponentProxyRBAC}, pruneScope{roleBindingGVK, render.ComponentProxyRBAC})
	m.Status.ConfigHash = hash
	s.shards, s.configHash = shards, hash
	setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionConfigReady, true, meshv1alpha1.ReasonReady,
		fmt.Sprintf("Proxy configuration %s (%d service port(s)) is rendered into %d namespace(s)", hash, len(cfg.Services), len(s.namespaces)))
	return nil
}

// reportUnmeshed marks the MeshPolicies and TrafficSplits in namespaces no Mesh owns as not accepted. Only the
// oldest Mesh does it, so that each such object has one writer.
func (r *MeshReconciler) reportUnmeshed(ctx context.Context, s *meshScope) error {
	if s.unmeshed == nil {
		return nil
	}
	var policies meshv1alpha1.MeshPolicyList
	var splits meshv1alpha1.TrafficSplitList
	if err := r.Client.List(ctx, &policies); err != nil {
		return err
	}
	if err := r.Client.List(ctx, &splits); err != nil {
		return err
	}
	var strayPolicies []meshv1alpha1.MeshPolicy
	for _, p := range policies.Items {
		if s.unmeshed[p.Namespace] {
			strayPolicies = append(strayPolicies, p)
		}
	}
	var straySplits []meshv1alpha1.TrafficSplit
	for _, sp := range splits.Items {
		if s.unmeshed[sp.Namespace] {
			straySplits = append(straySplits, sp)
		}
	}
	none := map[string]bool{}
	if err := r.writePolicyStatuses(ctx, strayPolicies, render.EvaluatePolicies(strayPolicies, none, nil, nil)); err != nil {
		return err
	}
	return r.writeSplitStatuses(ctx, straySplits, render.EvaluateSplits(straySplits, none, nil, nil))
}

func (r *MeshReconciler) clusterDomain() string {
	if r.ClusterDomain == "" {
		return "cluster.local"
	}
	return r.ClusterDomain
}

// writePolicyStatuses records each policy's verdict in its status, writing only what changed.
func (r *MeshReconciler) writePolicyStatuses(ctx context.Context, policies []meshv1alpha1.MeshPolicy, verdicts map[types.NamespacedName]render.Verdict) error {
	for i := range policies {
		p := &policies[i]
		before := p.DeepCopy()
		applyVerdict(&p.Status.Conditions, p.Generation, verdicts[client.ObjectKeyFromObject(p)])
		p.Status.ObservedGeneration = p.Generation
		if equality.Semantic.DeepEqual(before.Status, p.Status) {
			continue
		}
		if err := r.Client.Status().Patch(ctx, p, client.MergeFrom(before), client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("writing MeshPolicy %s status: %w", client.ObjectKeyFromObject(p), err)
		}
	}
	return nil
}

// writeSplitStatuses records each split's verdict in its status, writing only what changed.
func (r *MeshReconciler) writeSplitStatuses(ctx context.Context, splits []meshv1alpha1.TrafficSplit, verdicts map[types.NamespacedName]render.Verdict) error {
	for i := range splits {
		sp := &splits[i]
		before := sp.DeepCopy()
		applyVerdict(&sp.Status.Conditions, sp.Generation, verdicts[client.ObjectKeyFromObject(sp)])
		sp.Status.ObservedGeneration = sp.Generation
		if equality.Semantic.DeepEqual(before.Status, sp.Status) {
			continue
		}
		if err := r.Client.Status().Patch(ctx, sp, client.MergeFrom(before), client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("writing TrafficSplit %s status: %w", client.ObjectKeyFromObject(sp), err)
		}
	}
	return nil
}

func applyVerdict(conds *[]metav1.Condition, generation int64, v render.Verdict) {
	setCondition(conds, generation, meshv1alpha1.ConditionAccepted, v.Accepted, v.AcceptedReason, v.AcceptedMessage)
	setCondition(conds, generation, meshv1alpha1.ConditionResolvedRefs, v.ResolvedRefs, v.RefsReason, v.RefsMessage)
}
