package integration

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/internal/testenv"
)

// TestDefaultInstallIsValid renders config/default with the project's kustomize and has the real API server
// validate every object (server-side dry run): a field in the wrong place, a bad port name or an invalid
// cert-manager object fails here rather than on a user's cluster.
func TestDefaultInstallIsValid(t *testing.T) {
	c := newClient(t)
	kustomize := filepath.Join(testenv.RepoRoot(), "bin", "kustomize")
	if _, err := os.Stat(kustomize); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("bin/kustomize is missing: %v (make test-go builds it)", err)
		}
		t.Skip("bin/kustomize is missing: run make bin/kustomize")
	}
	out, err := exec.Command(kustomize, "build", filepath.Join(testenv.RepoRoot(), "config", "default")).Output()
	if err != nil {
		t.Fatalf("kustomize build config/default: %v", err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	kinds := map[string]int{}
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatal(err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		kinds[obj.GetKind()]++
		if obj.GetKind() == "CustomResourceDefinition" || obj.GetKind() == "Namespace" {
			// Created for real: the objects after them need them (the CRDs exist already).
			if err := c.Create(ctx(t), obj); err != nil && !isAlreadyExists(err) {
				t.Errorf("%s %s: %v", obj.GetKind(), obj.GetName(), err)
			}
			continue
		}
		if err := c.Create(ctx(t), obj, client.DryRunAll); err != nil {
			t.Errorf("the API server refuses %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
	for _, kind := range []string{"Deployment", "Service", "ClusterRole", "Certificate", "Issuer", "CustomResourceDefinition"} {
		if kinds[kind] == 0 {
			t.Errorf("config/default renders no %s", kind)
		}
	}
}
