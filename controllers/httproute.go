package controllers

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/trellis-mesh/trellis/internal/render"
)

// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes,verbs=get;list;watch
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=httproutes/status,verbs=get;update;patch

var httpRouteGVK = schema.GroupVersionKind{Group: gatewayv1.GroupName, Version: gatewayv1.GroupVersion.Version, Kind: "HTTPRoute"}

// GatewayAPIServed reports whether the API server serves Gateway API HTTPRoutes (gateway.networking.k8s.io/v1).
// Without them the mesh simply has no HTTPRoutes to read.
func GatewayAPIServed(mapper meta.RESTMapper) bool {
	_, err := mapper.RESTMapping(httpRouteGVK.GroupKind(), httpRouteGVK.Version)
	return err == nil
}

// listHTTPRoutes returns the mesh (GAMMA) HTTPRoutes of namespace ns, or none when the Gateway API is not served.
func (r *MeshReconciler) listHTTPRoutes(ctx context.Context, ns string) ([]gatewayv1.HTTPRoute, error) {
	if !r.GatewayAPIInstalled {
		return nil, nil
	}
	var list gatewayv1.HTTPRouteList
	if err := r.Client.List(ctx, &list, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("listing HTTPRoutes in %s: %w", ns, err)
	}
	var out []gatewayv1.HTTPRoute
	for i := range list.Items {
		if render.IsMeshRoute(&list.Items[i]) {
			out = append(out, list.Items[i])
		}
	}
	return out, nil
}

// writeHTTPRouteStatuses records the verdict on each mesh HTTPRoute in its status, one RouteParentStatus per
// Service parent under Trellis's controller name, leaving other controllers' entries alone. It writes only what
// changed.
func (r *MeshReconciler) writeHTTPRouteStatuses(ctx context.Context, routes []gatewayv1.HTTPRoute, verdicts map[types.NamespacedName]render.Verdict) error {
	for i := range routes {
		route := &routes[i]
		v, ok := verdicts[client.ObjectKeyFromObject(route)]
		if !ok {
			continue
		}
		before := route.DeepCopy()
		var parents []gatewayv1.RouteParentStatus
		for _, ps := range route.Status.Parents {
			if ps.ControllerName != render.ControllerName {
				parents = append(parents, ps)
			}
		}
		for _, p := range route.Spec.ParentRefs {
			if ptr := p.Kind; ptr == nil || *ptr != "Service" {
				continue
			}
			ps := gatewayv1.RouteParentStatus{ParentRef: p, ControllerName: render.ControllerName}
			for _, old := range before.Status.Parents {
				if old.ControllerName == render.ControllerName && equality.Semantic.DeepEqual(old.ParentRef, p) {
					ps.Conditions = old.Conditions
				}
			}
			applyVerdict(&ps.Conditions, route.Generation, v)
			parents = append(parents, ps)
		}
		route.Status.Parents = parents
		if equality.Semantic.DeepEqual(before.Status, route.Status) {
			continue
		}
		if err := r.Client.Status().Patch(ctx, route, client.MergeFrom(before), client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("writing HTTPRoute %s status: %w", client.ObjectKeyFromObject(route), err)
		}
	}
	return nil
}
