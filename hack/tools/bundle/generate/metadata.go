package generate

import (
	"bytes"
	stdbase64 "encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Annotation keys of registry+v1 bundles (operator-registry's bundle format).
const (
	MediaTypeKey      = "operators.operatorframework.io.bundle.mediatype.v1"
	ManifestsKey      = "operators.operatorframework.io.bundle.manifests.v1"
	MetadataKey       = "operators.operatorframework.io.bundle.metadata.v1"
	PackageKey        = "operators.operatorframework.io.bundle.package.v1"
	ChannelsKey       = "operators.operatorframework.io.bundle.channels.v1"
	DefaultChannelKey = "operators.operatorframework.io.bundle.channel.default.v1"
	TestMediaTypeKey  = "operators.operatorframework.io.test.mediatype.v1"
	TestConfigKey     = "operators.operatorframework.io.test.config.v1"
)

// annotation is one bundle annotation; the same list, in this order, makes annotations.yaml and the Dockerfile's
// LABELs, so the two cannot disagree.
type annotation struct{ key, value string }

func annotations(opts Options) []annotation {
	return []annotation{
		{MediaTypeKey, "registry+v1"},
		{ManifestsKey, "manifests/"},
		{MetadataKey, "metadata/"},
		{PackageKey, opts.Package},
		{ChannelsKey, strings.Join(opts.Channels, ",")},
		{DefaultChannelKey, opts.DefaultChannel},
		{TestMediaTypeKey, "scorecard+v1"},
		{TestConfigKey, "tests/scorecard/"},
	}
}

func annotationsFile(opts Options) []byte {
	var b bytes.Buffer
	b.WriteString(Header + "annotations:\n")
	for _, a := range annotations(opts) {
		fmt.Fprintf(&b, "  %s: %s\n", a.key, a.value)
	}
	return b.Bytes()
}

func dependenciesFile(opts Options) []byte {
	var b bytes.Buffer
	b.WriteString(Header)
	b.WriteString("# OLM resolves these before it installs Trellis.")
	if _, ok := opts.Requires["cert-manager"]; ok {
		b.WriteString(" cert-manager is the package of that name in the\n" +
			"# community catalog (OperatorHub.io); it issues the mesh's identity chain and the injector's certificate.")
	}
	b.WriteString("\n")
	if len(opts.Requires) == 0 {
		b.WriteString("dependencies: []\n")
		return b.Bytes()
	}
	b.WriteString("dependencies:\n")
	pkgs := make([]string, 0, len(opts.Requires))
	for p := range opts.Requires {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	for _, p := range pkgs {
		fmt.Fprintf(&b, "- type: olm.package\n  value:\n    packageName: %s\n    version: %q\n", p, opts.Requires[p])
	}
	return b.Bytes()
}

func scorecardFile(opts Options) []byte {
	return []byte(Header + `# The basic scorecard suite: every alm-examples object has a spec.
# Run it on a cluster with OLM: operator-sdk scorecard bundle/ (docs/olm.md).
apiVersion: scorecard.operatorframework.io/v1alpha3
kind: Configuration
metadata:
  name: config
stages:
- parallel: true
  tests:
  - entrypoint:
    - scorecard-test
    - basic-check-spec
    image: ` + opts.ScorecardImage + `
    labels:
      suite: basic
      test: basic-check-spec-test
    storage:
      spec:
        mountPath: {}
storage:
  spec:
    mountPath: {}
`)
}

func dockerfile(opts Options) []byte {
	var b bytes.Buffer
	b.WriteString(Header)
	b.WriteString("# The Trellis bundle image, built from the repository root:\n" +
		"#   docker build -f bundle.Dockerfile -t <registry>/trellis-bundle:v" + opts.Version + " .\n" +
		"FROM scratch\n\n" +
		"# The same annotations as bundle/metadata/annotations.yaml.\n")
	for _, a := range annotations(opts) {
		fmt.Fprintf(&b, "LABEL %s=%s\n", a.key, a.value)
	}
	b.WriteString("\nCOPY bundle/manifests /manifests/\nCOPY bundle/metadata /metadata/\n" +
		"COPY bundle/tests/scorecard /tests/scorecard/\n")
	return b.Bytes()
}

// marshal renders an object as YAML with sorted keys, after the generated-file header.
func marshal(obj map[string]any) ([]byte, error) {
	data, err := yaml.Marshal(obj)
	if err != nil {
		return nil, err
	}
	return append([]byte(Header), data...), nil
}

// mustJSON converts a typed value into its JSON form (maps and slices) for an unstructured object. The values
// passed are plain API structs, which always marshal.
func mustJSON(v any) any {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var out any
	if err := json.Unmarshal(data, &out); err != nil {
		panic(err)
	}
	return out
}

// fromJSON decodes an unstructured value into a typed one; strict rejects unknown fields.
func fromJSON(v any, into any, strict bool) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if !strict {
		return json.Unmarshal(data, into)
	}
	unknown, err := sigsjson.UnmarshalStrict(data, into)
	if err != nil {
		return err
	}
	return errors.Join(unknown...)
}

func toAnyMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func base64(data []byte) string { return stdbase64.StdEncoding.EncodeToString(data) }
