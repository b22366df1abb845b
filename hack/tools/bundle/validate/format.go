package validate

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/blang/semver/v4"
	"github.com/operator-framework/api/pkg/manifests"
	"sigs.k8s.io/yaml"
)

const (
	annotationsPath  = "metadata/annotations.yaml"
	dependenciesPath = "metadata/dependencies.yaml"
	annotationPrefix = "operators.operatorframework.io."
	mediaTypeKey     = "operators.operatorframework.io.bundle.mediatype.v1"
	manifestsKey     = "operators.operatorframework.io.bundle.manifests.v1"
	metadataKey      = "operators.operatorframework.io.bundle.metadata.v1"
	packageKey       = "operators.operatorframework.io.bundle.package.v1"
	channelsKey      = "operators.operatorframework.io.bundle.channels.v1"
	defaultKey       = "operators.operatorframework.io.bundle.channel.default.v1"
	testConfigKey    = "operators.operatorframework.io.test.config.v1"
)

// supportedKinds are the kinds OLM installs from a registry+v1 bundle (operator-registry's supported resources).
var supportedKinds = map[string]bool{
	"ClusterServiceVersion": true, "CustomResourceDefinition": true, "Secret": true, "ClusterRole": true,
	"ClusterRoleBinding": true, "ConfigMap": true, "ServiceAccount": true, "Service": true, "Role": true,
	"RoleBinding": true, "PrometheusRule": true, "ServiceMonitor": true, "PodDisruptionBudget": true,
	"PriorityClass": true, "VerticalPodAutoscaler": true, "ConsoleYAMLSample": true, "ConsoleQuickStart": true,
	"ConsoleCLIDownload": true, "ConsoleLink": true, "NetworkPolicy": true,
}

// format collects the findings of the format checks.
type format struct {
	dir      string
	findings []Finding
}

func (f *format) errorf(object, msg string, args ...any) {
	f.findings = append(f.findings, Finding{Error, "format", object, fmt.Sprintf(msg, args...)})
}

// checkFormat checks what operator-sdk checks with operator-registry before running the validators: the
// annotations, the dependencies, the kinds in manifests/, and (here) that the Dockerfile agrees with them.
func checkFormat(dir string, b *manifests.Bundle, dockerfile string) []Finding {
	f := &format{dir: dir}
	ann := f.annotations()
	f.dependencies()
	for _, o := range b.Objects {
		if !supportedKinds[o.GetKind()] {
			f.errorf(o.GetName(), "kind %s cannot be installed from a bundle", o.GetKind())
		}
	}
	if cfg, ok := ann[testConfigKey]; ok {
		f.scorecard(path.Join(cfg, "config.yaml"))
	}
	if dockerfile != "" && ann != nil {
		f.dockerfile(dockerfile, ann)
	}
	return f.findings
}

func (f *format) annotations() map[string]string {
	var file struct {
		Annotations map[string]string `json:"annotations"`
	}
	if !f.readYAML(annotationsPath, &file, true) {
		return nil
	}
	a := file.Annotations
	want := map[string]string{mediaTypeKey: "registry+v1", manifestsKey: "manifests/", metadataKey: "metadata/"}
	for _, k := range []string{mediaTypeKey, manifestsKey, metadataKey} {
		if a[k] != want[k] {
			f.errorf(annotationsPath, "%s is %q, want %q", k, a[k], want[k])
		}
	}
	if a[packageKey] == "" {
		f.errorf(annotationsPath, "%s (the package name) is missing", packageKey)
	}
	channels := strings.Split(a[channelsKey], ",")
	if a[channelsKey] == "" {
		f.errorf(annotationsPath, "%s (the channels) is missing", channelsKey)
	}
	if d := a[defaultKey]; d != "" {
		found := false
		for _, c := range channels {
			found = found || strings.TrimSpace(c) == d
		}
		if !found {
			f.errorf(annotationsPath, "default channel %q is not one of the channels %q", d, a[channelsKey])
		}
	}
	return a
}

func (f *format) dependencies() {
	if _, err := os.Stat(filepath.Join(f.dir, dependenciesPath)); os.IsNotExist(err) {
		return
	}
	var file struct {
		Dependencies []struct {
			Type  string         `json:"type"`
			Value map[string]any `json:"value"`
		} `json:"dependencies"`
	}
	if !f.readYAML(dependenciesPath, &file, true) {
		return
	}
	for i, d := range file.Dependencies {
		str := func(k string) string { s, _ := d.Value[k].(string); return s }
		switch d.Type {
		case "olm.package":
			if str("packageName") == "" {
				f.errorf(dependenciesPath, "dependencies[%d]: olm.package needs value.packageName", i)
			}
			if _, err := semver.ParseRange(str("version")); err != nil {
				f.errorf(dependenciesPath, "dependencies[%d]: version range %q: %v", i, str("version"), err)
			}
		case "olm.gvk":
			if str("group") == "" || str("version") == "" || str("kind") == "" {
				f.errorf(dependenciesPath, "dependencies[%d]: olm.gvk needs value.group, value.version and value.kind", i)
			}
		case "olm.label", "olm.constraint":
		default:
			f.errorf(dependenciesPath, "dependencies[%d]: unknown type %q", i, d.Type)
		}
	}
}

func (f *format) scorecard(rel string) {
	var cfg struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Stages     []any  `json:"stages"`
	}
	if !f.readYAML(rel, &cfg, false) {
		return
	}
	if cfg.Kind != "Configuration" || !strings.HasPrefix(cfg.APIVersion, "scorecard.operatorframework.io/") ||
		len(cfg.Stages) == 0 {
		f.errorf(rel, "not a scorecard Configuration with stages")
	}
}

// dockerfile checks that every operators.operatorframework.io LABEL equals the annotation of the same key and
// back, and that the COPY sources exist and land where the annotations say.
func (f *format) dockerfile(file string, ann map[string]string) {
	data, err := os.ReadFile(file)
	if err != nil {
		f.errorf(file, "%v", err)
		return
	}
	labels := map[string]string{}
	copies := map[string]string{} // destination -> source
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "LABEL":
			for _, kv := range fields[1:] {
				k, v, _ := strings.Cut(kv, "=")
				labels[k] = strings.Trim(v, `"`)
			}
		case "COPY":
			if len(fields) == 3 {
				copies[fields[2]] = fields[1]
			}
		}
	}
	var keys []string
	for k := range ann {
		keys = append(keys, k)
	}
	for k := range labels {
		if _, ok := ann[k]; !ok && strings.HasPrefix(k, annotationPrefix) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if labels[k] != ann[k] {
			f.errorf(file, "LABEL %s=%q but the annotation is %q", k, labels[k], ann[k])
		}
	}
	for _, key := range []string{manifestsKey, metadataKey, testConfigKey} {
		dst := "/" + strings.TrimSuffix(ann[key], "/") + "/"
		if ann[key] == "" {
			continue
		}
		src, ok := copies[dst]
		if !ok {
			f.errorf(file, "no COPY to %s (annotation %s)", dst, key)
			continue
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(file), src)); err != nil {
			f.errorf(file, "COPY source %s: %v", src, err)
		}
	}
}

// readYAML decodes a bundle file; strict rejects fields into lacks.
func (f *format) readYAML(rel string, into any, strict bool) bool {
	data, err := os.ReadFile(filepath.Join(f.dir, filepath.FromSlash(rel)))
	if err != nil {
		f.errorf(rel, "%v", err)
		return false
	}
	unmarshal := yaml.Unmarshal
	if strict {
		unmarshal = yaml.UnmarshalStrict
	}
	if err := unmarshal(data, into); err != nil {
		f.errorf(rel, "%v", err)
		return false
	}
	return true
}
