package validate_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/hack/tools/bundle/generate"
	"github.com/trellis-mesh/trellis/hack/tools/bundle/validate"
)

// writeFixture generates the fixture bundle into a temporary directory laid out like the repository (bundle/ and
// bundle.Dockerfile side by side) and returns that directory.
func writeFixture(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "testdata", "fixture.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := generate.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	b, err := generate.Generate(objs, generate.Options{
		Version: "1.2.3", Package: "demo", CreatedAt: "2026-01-01T00:00:00Z", ScorecardImage: "scorecard:v1",
		Requires: map[string]string{"cert-manager": ">=1.11.0 <2.0.0"},
		Images: map[string]string{"example.io/demo": "registry.example/demo:v1.2.3",
			"example.io/helper": "registry.example/helper:v1.2.3"},
	})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := b.Write(filepath.Join(root, "bundle"), filepath.Join(root, "bundle.Dockerfile")); err != nil {
		t.Fatal(err)
	}
	return root
}

func run(t *testing.T, root string) validate.Report {
	t.Helper()
	// The fixture has no OperatorHub metadata (provider, maintainers, icon): the default validators and the
	// format checks are what these tests are about.
	r, err := validate.Bundle(filepath.Join(root, "bundle"), validate.Options{K8sVersion: "1.34",
		Dockerfile: filepath.Join(root, "bundle.Dockerfile")})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestValidBundle(t *testing.T) {
	r := run(t, writeFixture(t))
	if r.Errors() != 0 {
		var out bytes.Buffer
		r.Print(&out)
		t.Fatalf("errors in a generated bundle:\n%s", out.String())
	}
}

// TestFindsErrors: each broken bundle gets an error naming the problem.
func TestFindsErrors(t *testing.T) {
	edit := func(file, from, to string) func(t *testing.T, root string) {
		return func(t *testing.T, root string) {
			p := filepath.Join(root, filepath.FromSlash(file))
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(data, []byte(from)) {
				t.Fatalf("%s has no %q", file, from)
			}
			if err := os.WriteFile(p, bytes.Replace(data, []byte(from), []byte(to), 1), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name    string
		breakIt func(t *testing.T, root string)
		want    string
	}{
		{"a LABEL that disagrees with the annotations",
			edit("bundle.Dockerfile", "bundle.channels.v1=alpha", "bundle.channels.v1=stable"),
			`LABEL operators.operatorframework.io.bundle.channels.v1="stable" but the annotation is "alpha"`},
		{"a COPY of a missing directory",
			edit("bundle.Dockerfile", "COPY bundle/metadata", "COPY bundle/meta"),
			"COPY source bundle/meta"},
		{"a default channel outside the channels",
			edit("bundle/metadata/annotations.yaml", "channel.default.v1: alpha", "channel.default.v1: stable"),
			`default channel "stable" is not one of the channels`},
		{"a wrong media type",
			edit("bundle/metadata/annotations.yaml", "registry+v1", "helm+v1"),
			`mediatype.v1 is "helm+v1", want "registry+v1"`},
		{"a dependency with a bad range",
			edit("bundle/metadata/dependencies.yaml", `">=1.11.0 <2.0.0"`, `"one or two"`),
			`version range "one or two"`},
		{"a kind OLM cannot install",
			func(t *testing.T, root string) {
				job := "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: setup\n"
				if err := os.WriteFile(filepath.Join(root, "bundle", "manifests", "setup_batch_v1_job.yaml"), []byte(job), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			"kind Job cannot be installed from a bundle"},
		{"an owned CRD missing from the bundle",
			func(t *testing.T, root string) {
				if err := os.Remove(filepath.Join(root, "bundle", "manifests", "widgets.example.io.yaml")); err != nil {
					t.Fatal(err)
				}
			},
			`owned CRD "example.io/v1, Kind=Widget" not found`},
		{"an example of a kind the CSV does not own",
			edit("bundle/manifests/demo.clusterserviceversion.yaml", `"apiVersion": "example.io/v1"`,
				`"apiVersion": "example.io/v9"`),
			"example.io/v9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := writeFixture(t)
			tc.breakIt(t, root)
			r := run(t, root)
			var out bytes.Buffer
			r.Print(&out)
			found := false
			for _, f := range r.Findings {
				found = found || (f.Level == validate.Error && strings.Contains(f.Message+" "+f.Object, tc.want))
			}
			if !found {
				t.Fatalf("no error containing %q:\n%s", tc.want, out.String())
			}
		})
	}
}
