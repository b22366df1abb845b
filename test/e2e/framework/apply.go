package framework

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DecodeYAML splits a multi-document YAML stream into objects; empty documents are skipped.
func DecodeYAML(data []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		u := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(doc, &u.Object); err != nil {
			return nil, err
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// Apply server-side-applies objects in order with the suites' field owner, taking ownership of conflicting fields.
// The objects are not changed (so a failed Apply can be retried with them).
func (e *Env) Apply(ctx context.Context, objs ...*unstructured.Unstructured) error {
	for _, o := range objs {
		if err := e.Client.Apply(ctx, client.ApplyConfigurationFromUnstructured(o.DeepCopy()), client.FieldOwner(FieldOwner),
			client.ForceOwnership); err != nil {
			return fmt.Errorf("apply %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	return nil
}

// ApplyYAML decodes and applies a multi-document YAML string; namespaced objects without a namespace go to ns
// (if ns is not empty). It returns the objects as sent.
func (e *Env) ApplyYAML(ctx context.Context, ns, yaml string) ([]*unstructured.Unstructured, error) {
	objs, err := DecodeYAML([]byte(yaml))
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		if ns != "" && o.GetNamespace() == "" && e.namespaced(o) {
			o.SetNamespace(ns)
		}
	}
	return objs, e.Apply(ctx, objs...)
}

// ApplyFile applies a YAML file (see ApplyYAML).
func (e *Env) ApplyFile(ctx context.Context, ns, path string) ([]*unstructured.Unstructured, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return e.ApplyYAML(ctx, ns, string(b))
}

func (e *Env) namespaced(o *unstructured.Unstructured) bool {
	ok, err := e.Client.IsObjectNamespaced(o)
	return err == nil && ok
}

// Kustomize renders a kustomization folder (relative to the repository root or absolute) with bin/kustomize.
func (e *Env) Kustomize(ctx context.Context, dir string) (string, error) {
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(e.Root, dir)
	}
	kustomize := filepath.Join(e.Root, "bin", "kustomize")
	if _, err := os.Stat(kustomize); err != nil {
		if _, err := e.Run(ctx, "make", "--no-print-directory", kustomize); err != nil {
			return "", fmt.Errorf("kustomize is not built: %w", err)
		}
	}
	return e.Run(ctx, kustomize, "build", dir)
}

// Install is what InstallTrellis put into the cluster.
type Install struct {
	// Objects are the rendered objects of test/e2e/kustomize (config/default with the dev image tags).
	Objects []*unstructured.Unstructured
	// Namespace and Deployment name the manager.
	Namespace, Deployment string
}

// InstallTrellis renders test/e2e/kustomize (config/default with trellis.io/<name>:dev images), applies the CRDs
// first, waits until they are established, then applies the rest. It does not wait for the manager (tests do,
// with WaitDeploymentAvailable). It returns nil without error when the tree has no config/default yet.
func (e *Env) InstallTrellis(ctx context.Context) (*Install, error) {
	if _, err := os.Stat(filepath.Join(e.Root, "config", "default", "kustomization.yaml")); err != nil {
		logf("config/default does not exist yet: Trellis is not installed")
		return nil, nil
	}
	out, err := e.Kustomize(ctx, "test/e2e/kustomize")
	if err != nil {
		return nil, err
	}
	objs, err := DecodeYAML([]byte(out))
	if err != nil {
		return nil, err
	}
	in := &Install{Objects: objs}
	var crds, rest []*unstructured.Unstructured
	for _, o := range objs {
		if err := e.stampImageDigests(o); err != nil {
			return nil, err
		}
		switch o.GetKind() {
		case "CustomResourceDefinition":
			crds = append(crds, o)
		case "Deployment":
			in.Namespace, in.Deployment = o.GetNamespace(), o.GetName()
			rest = append(rest, o)
		default:
			rest = append(rest, o)
		}
	}
	if err := e.Apply(ctx, crds...); err != nil {
		return in, err
	}
	for _, c := range crds {
		if err := e.WaitFor(ctx, time.Minute, "CRD "+c.GetName()+" established", func(ctx context.Context) (bool, error) {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := e.Client.Get(ctx, client.ObjectKey{Name: c.GetName()}, &crd); err != nil {
				return false, client.IgnoreNotFound(err)
			}
			for _, cond := range crd.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		}); err != nil {
			return in, err
		}
	}
	// Objects served by a webhook the manager itself hosts can fail until it runs: retry for a while.
	if err := e.WaitFor(ctx, 2*time.Minute, "Trellis manifests applied", func(ctx context.Context) (bool, error) {
		err := e.Apply(ctx, rest...)
		if err != nil && (apierrors.IsInternalError(err) || apierrors.IsServiceUnavailable(err) || apierrors.IsNotFound(err)) {
			logf("retrying: %v", err)
			return false, nil
		}
		return err == nil, err
	}); err != nil {
		return in, err
	}
	logf("installed Trellis: %d objects; manager Deployment %s/%s", len(objs), in.Namespace, in.Deployment)
	return in, nil
}

// ImagesAnnotation on a pod template holds the digests of the locally built images its containers run, so that
// installing again after `make images` changed an image rolls the workload although the tag stays :dev.
const ImagesAnnotation = "e2e.trellis.io/image-digests"

func (e *Env) stampImageDigests(o *unstructured.Unstructured) error {
	containers, found, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if !found {
		return nil
	}
	var digests []string
	for _, c := range containers {
		img, _, _ := unstructured.NestedString(c.(map[string]any), "image")
		name, ok := strings.CutPrefix(img, ImageRepo+"/")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, ":")
		b, err := os.ReadFile(filepath.Join(e.Root, ".tmp", "images", name+".digest"))
		if err != nil {
			continue // not built by make images (e.g. an infrastructure image)
		}
		digests = append(digests, name+"@"+strings.TrimSpace(string(b)))
	}
	if len(digests) == 0 {
		return nil
	}
	return unstructured.SetNestedField(o.Object, strings.Join(digests, ","),
		"spec", "template", "metadata", "annotations", ImagesAnnotation)
}
