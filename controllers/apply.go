package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/internal/render"
)

// applier server-side applies rendered objects with one field owner and prunes what the mesh owns and no longer
// renders. It remembers, per object, the hash of what it last applied and the resourceVersion the API server
// answered with: when the rendered content and the cached object are both unchanged since, it sends nothing, so
// a steady state makes no request; when anyone else changed the object, it applies again and takes it back.
type applier struct {
	client client.Client

	mu      sync.Mutex
	applied map[objectKey]appliedRecord
}

type appliedRecord struct {
	hash            string
	resourceVersion string
}

func newApplier(c client.Client) *applier {
	return &applier{client: c, applied: map[objectKey]appliedRecord{}}
}

// objectKey identifies an object across kinds.
type objectKey struct {
	gvk       schema.GroupVersionKind
	namespace string
	name      string
}

func keyOf(gvk schema.GroupVersionKind, obj client.Object) objectKey {
	return objectKey{gvk: gvk, namespace: obj.GetNamespace(), name: obj.GetName()}
}

// apply server-side applies each object that changed since it was last applied. Objects must have their TypeMeta
// set, as render functions do.
func (a *applier) apply(ctx context.Context, objs []client.Object) error {
	for _, obj := range objs {
		u, hash, err := toUnstructured(obj)
		if err != nil {
			return err
		}
		key := keyOf(u.GroupVersionKind(), u)
		// A typed object reads from the same informer the reconciler's watches fill.
		current, ok := obj.DeepCopyObject().(client.Object)
		if !ok {
			return fmt.Errorf("%T is not a client.Object", obj)
		}
		err = a.client.Get(ctx, client.ObjectKeyFromObject(u), current)
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("reading %s %s: %w", u.GetKind(), client.ObjectKeyFromObject(u), err)
		}
		a.mu.Lock()
		last, seen := a.applied[key]
		a.mu.Unlock()
		if err == nil && seen && last.hash == hash && last.resourceVersion == current.GetResourceVersion() {
			continue
		}
		if err := a.client.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
			return fmt.Errorf("applying %s %s: %w", u.GetKind(), client.ObjectKeyFromObject(u), err)
		}
		a.mu.Lock()
		a.applied[key] = appliedRecord{hash: hash, resourceVersion: u.GetResourceVersion()}
		a.mu.Unlock()
	}
	return nil
}

// toUnstructured converts a rendered object for apply (no status, no empty creation timestamp) and returns the
// hash of that content.
func toUnstructured(obj client.Object) (*unstructured.Unstructured, string, error) {
	content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, "", fmt.Errorf("converting %T: %w", obj, err)
	}
	u := &unstructured.Unstructured{Object: content}
	delete(u.Object, "status")
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	if u.GetKind() == "" {
		return nil, "", fmt.Errorf("rendered %T %s has no kind", obj, obj.GetName())
	}
	data, err := json.Marshal(u.Object)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(data)
	return u, hex.EncodeToString(sum[:]), nil
}

// forget drops what the applier remembers of objects it pruned.
func (a *applier) forget(key objectKey) {
	a.mu.Lock()
	delete(a.applied, key)
	a.mu.Unlock()
}

// pruneScope is a kind and component whose objects a reconcile rendered completely, so that any other object of
// that kind and component labelled with the mesh is stale.
type pruneScope struct {
	gvk       schema.GroupVersionKind
	component string
}

// prune deletes the objects in scopes that carry the mesh's label and are not in keep.
func (a *applier) prune(ctx context.Context, meshName string, scopes []pruneScope, keep []client.Object) error {
	wanted := map[objectKey]bool{}
	for _, obj := range keep {
		wanted[keyOf(obj.GetObjectKind().GroupVersionKind(), obj)] = true
	}
	for _, scope := range scopes {
		gvk := scope.gvk
		// Typed lists read from the same informers as the reconciler's watches.
		obj, err := a.client.Scheme().New(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
		if err != nil {
			return fmt.Errorf("no list type for %s: %w", gvk, err)
		}
		list, ok := obj.(client.ObjectList)
		if !ok {
			return fmt.Errorf("%T is not a list", obj)
		}
		if err := a.client.List(ctx, list, client.MatchingLabels{
			render.LabelMesh: meshName, render.LabelManagedBy: render.ManagedByValue, render.LabelComponent: scope.component,
		}); err != nil {
			return fmt.Errorf("listing %s to prune: %w", gvk.Kind, err)
		}
		items, err := apimeta.ExtractList(list)
		if err != nil {
			return err
		}
		for _, it := range items {
			item, ok := it.(client.Object)
			if !ok || wanted[keyOf(gvk, item)] || !item.GetDeletionTimestamp().IsZero() {
				continue
			}
			if err := a.client.Delete(ctx, item, client.PropagationPolicy(metav1.DeletePropagationBackground)); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("pruning %s %s: %w", gvk.Kind, client.ObjectKeyFromObject(item), err)
			}
			a.forget(keyOf(gvk, item))
		}
	}
	return nil
}
