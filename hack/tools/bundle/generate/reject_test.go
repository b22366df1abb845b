package generate_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/hack/tools/bundle/generate"
)

// fixture is a small install in the shape of `kustomize build config/manifests`.
var fixture = func() string {
	data, err := os.ReadFile(filepath.Join("..", "testdata", "fixture.yaml"))
	if err != nil {
		panic(err)
	}
	return string(data)
}()

func fixtureOptions() generate.Options {
	return generate.Options{
		Version: "1.2.3", Package: "demo", CreatedAt: "2026-01-01T00:00:00Z", ScorecardImage: "scorecard:v1",
		Images: map[string]string{"example.io/demo": "registry.example/demo:v1.2.3",
			"example.io/helper": "registry.example/helper:v1.2.3"},
	}
}

func generateFixture(t *testing.T, yaml string, opts generate.Options) (*generate.Bundle, error) {
	t.Helper()
	objs, err := generate.Decode([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return generate.Generate(objs, opts)
}

func TestFixture(t *testing.T) {
	b, err := generateFixture(t, fixture, fixtureOptions())
	if err != nil {
		t.Fatal(err)
	}
	csv := string(b.Files["manifests/demo.clusterserviceversion.yaml"])
	for _, want := range []string{
		"name: demo.v1.2.3", "version: 1.2.3", "image: registry.example/demo:v1.2.3",
		"--helper-image=registry.example/helper:v1.2.3", "name: helper", "description: Size of the widget.",
		"description: Widget is a test kind.", "serviceAccountName: demo", `createdAt: "2026-01-01T00:00:00Z"`,
		"strategy: deployment",
	} {
		if !strings.Contains(csv, want) {
			t.Errorf("the CSV lacks %q:\n%s", want, csv)
		}
	}
	for _, unwanted := range []string{"namespace:", ":dev", "creationTimestamp"} {
		if strings.Contains(csv, unwanted) {
			t.Errorf("the CSV has %q", unwanted)
		}
	}
	if _, ok := b.Files["manifests/widgets.example.io.yaml"]; !ok {
		t.Errorf("no CRD file among %v", b.Paths())
	}
	if deps := string(b.Files["metadata/dependencies.yaml"]); !strings.Contains(deps, "dependencies: []") {
		t.Errorf("without Requires, dependencies.yaml should list none:\n%s", deps)
	}
	if len(b.Files) != 5 {
		t.Errorf("files %v, want the CSV, the CRD, annotations, dependencies and the scorecard config", b.Paths())
	}
}

// TestRejects: inputs that would make a broken bundle, or lose part of the install silently, are errors that say
// what to fix.
func TestRejects(t *testing.T) {
	for _, tc := range []struct {
		name      string
		from, to  string
		opts      func(*generate.Options)
		wantError string
	}{
		{
			name: "a port misplaced under volumeMounts",
			from: "        readinessProbe:",
			to: "        volumeMounts:\n        - name: certs\n          mountPath: /certs\n        - name: probes\n" +
				"          containerPort: 8081\n        readinessProbe:",
			wantError: `unknown field "spec.template.spec.containers[0].volumeMounts[1].containerPort"`,
		},
		{
			name:      "a probe on a port the container does not name",
			from:      "port: probes}",
			to:        "port: health}",
			wantError: `the readiness probe uses port "health", which the container does not name`,
		},
		{
			name:      "a mount of a volume the pod lacks",
			from:      "        readinessProbe:",
			to:        "        volumeMounts:\n        - {name: certs, mountPath: /certs}\n        readinessProbe:",
			wantError: `names volume "certs", which the pod does not have`,
		},
		{
			name:      "an image without a release reference",
			opts:      func(o *generate.Options) { delete(o.Images, "example.io/helper") },
			wantError: "image example.io/helper:dev has no release reference",
		},
		{
			name:      "a descriptor on a field the CRD lacks",
			from:      "      - path: size",
			to:        "      - path: colour",
			wantError: "descriptor spec.colour: no such field in the CRD schema",
		},
		{
			name:      "a base CSV entry for a CRD that is not installed",
			from:      "    - name: widgets.example.io\n      version: v1",
			to:        "    - name: gadgets.example.io\n      version: v1",
			wantError: "base CSV describes CRD gadgets.example.io v1, which the install does not have",
		},
		{
			name:      "a webhook configuration",
			from:      "---\napiVersion: example.io/v1",
			to:        "---\napiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata: {name: inject}\n---\napiVersion: example.io/v1",
			wantError: "spec.webhookdefinitions",
		},
		{
			name:      "a kind OLM cannot install",
			from:      "---\napiVersion: example.io/v1",
			to:        "---\napiVersion: batch/v1\nkind: Job\nmetadata: {name: setup}\n---\napiVersion: example.io/v1",
			wantError: "batch/v1, Kind=Job setup: OLM cannot install this kind from a bundle",
		},
		{
			name:      "a ServiceAccount bound to nothing",
			from:      "- {kind: ServiceAccount, name: demo, namespace: demo-system}",
			to:        "- {kind: ServiceAccount, name: other, namespace: demo-system}",
			wantError: "ServiceAccount demo is bound to no role",
		},
		{
			name:      "a binding that mixes the manager with other subjects",
			from:      "- {kind: ServiceAccount, name: demo, namespace: demo-system}",
			to:        "- {kind: ServiceAccount, name: demo, namespace: demo-system}\n- {kind: Group, name: admins}",
			wantError: "binds the manager's ServiceAccount and other subjects",
		},
		{
			name:      "no samples",
			from:      "---\napiVersion: example.io/v1\nkind: Widget",
			to:        "---\napiVersion: v1\nkind: ConfigMap",
			wantError: "no samples of the owned CRDs",
		},
		{
			name:      "a default channel outside the channels",
			opts:      func(o *generate.Options) { o.Channels, o.DefaultChannel = []string{"alpha"}, "stable" },
			wantError: `default channel "stable" is not one of the channels`,
		},
		{
			name:      "no createdAt",
			opts:      func(o *generate.Options) { o.CreatedAt = "" },
			wantError: "createdAt is required",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := fixture
			if tc.from != "" {
				if !strings.Contains(in, tc.from) {
					t.Fatalf("the fixture has no %q", tc.from)
				}
				in = strings.Replace(in, tc.from, tc.to, 1)
			}
			opts := fixtureOptions()
			if tc.opts != nil {
				tc.opts(&opts)
			}
			_, err := generateFixture(t, in, opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantError) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantError)
			}
		})
	}
}
