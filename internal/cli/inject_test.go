package cli

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/inject"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// run runs the trellis command with args and stdin, and returns stdout and stderr.
func run(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	cmd := NewRootCommand()
	var stdout, stderr bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	err := cmd.Execute()
	return stdout.String(), stderr.String(), err
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/cli -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (run with -update after checking the change):\n--- got\n%s", path, got)
	}
}

func TestInjectGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"workloads", nil},
		{"workloads-classic", []string{"--native-sidecar=false"}},
		{"workloads-custom", []string{"--mesh=prod", "--proxy-image=registry.example.com/proxy:v1", "--init-image=registry.example.com/proxy-init:v1",
			"--control-plane-namespace=mesh-system", "--trust-domain=prod.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"inject", "-f", filepath.Join("testdata", "workloads.yaml")}, tc.args...)
			out, report, err := run(t, "", args...)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name+".golden.yaml", out)
			golden(t, tc.name+".report.golden", report)
			checkDecodes(t, out, !slicesContain(tc.args, "--native-sidecar=false"))

			// Injecting the output again changes nothing.
			again, report, err := run(t, out, append([]string{"inject"}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if again != out {
				t.Fatalf("injecting twice differs from injecting once:\n%s", again)
			}
			if !strings.Contains(report, "deployment/web already injected") {
				t.Errorf("second report:\n%s", report)
			}
		})
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// checkDecodes decodes every document strictly into client-go's typed objects, as kubectl would, and checks that
// every workload the input opts in carries a proxy.
func checkDecodes(t *testing.T, out string, native bool) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := meshv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	injected := map[string]bool{}
	var decode func(doc []byte)
	decode = func(doc []byte) {
		obj, _, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("decoding %s: %v", doc, err)
		}
		var spec *corev1.PodSpec
		var name string
		switch o := obj.(type) {
		case *corev1.List:
			for _, item := range o.Items {
				decode(item.Raw)
			}
			return
		case *corev1.Pod:
			spec, name = &o.Spec, "pod/"+o.Name
		case *appsv1.Deployment:
			spec, name = &o.Spec.Template.Spec, "deployment/"+o.Name
		case *appsv1.StatefulSet:
			spec, name = &o.Spec.Template.Spec, "statefulset/"+o.Name
		case *appsv1.DaemonSet:
			spec, name = &o.Spec.Template.Spec, "daemonset/"+o.Name
		case *appsv1.ReplicaSet:
			spec, name = &o.Spec.Template.Spec, "replicaset/"+o.Name
		case *batchv1.Job:
			spec, name = &o.Spec.Template.Spec, "job/"+o.Name
		case *batchv1.CronJob:
			spec, name = &o.Spec.JobTemplate.Spec.Template.Spec, "cronjob/"+o.Name
		default:
			return
		}
		var proxy *corev1.Container
		for i, c := range append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...) {
			if c.Name == inject.ProxyContainerName {
				proxy = &c
				if native && (i != 1 || c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
					t.Errorf("%s: the proxy is not the native sidecar right after trellis-init", name)
				}
				if !native && (i != len(spec.InitContainers) || c.RestartPolicy != nil) {
					t.Errorf("%s: the proxy is not the first regular container", name)
				}
			}
		}
		injected[name] = proxy != nil
	}
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		decode(doc)
	}
	want := map[string]bool{
		"deployment/web": true, "statefulset/db": true, "daemonset/collector": true, "daemonset/node-agent": false,
		"replicaset/legacy": false, "job/migrate": true, "cronjob/report": true, "pod/debug": true,
		"pod/dns-debug": false, "deployment/api": true,
	}
	for name, w := range want {
		if injected[name] != w {
			t.Errorf("%s injected %v, want %v", name, injected[name], w)
		}
	}
}

// TestInjectPreservesWhatItDoesNotKnow: fields this build's API types lack survive injection.
func TestInjectPreservesWhatItDoesNotKnow(t *testing.T) {
	in := `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      futurePodField: keep-me
      containers:
      - name: web
        image: web
        futureContainerField: {a: 1}
`
	out, _, err := run(t, in, "inject")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"futurePodField: keep-me", "futureContainerField:\n          a: 1", "name: trellis-proxy"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "resources: {}") || strings.Contains(out, "creationTimestamp") {
		t.Errorf("output gained empty fields:\n%s", out)
	}
}

func TestInjectInputs(t *testing.T) {
	deployment := `{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
 "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web"}]}}}}`
	optedIn := strings.Replace(deployment, `"app": "web"`, `"app": "web", "trellis.io/inject": "enabled"`, 1)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.json"), []byte(deployment), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not yaml: ["), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		stdin      string
		args       []string
		wantReport string
		wantErr    string
	}{
		{name: "stdin by default", stdin: deployment, wantReport: "deployment/web injected\n"},
		{name: "stdin as -", stdin: deployment, args: []string{"-"}, wantReport: "deployment/web injected\n"},
		{name: "folder", args: []string{"-f", dir}, wantReport: "deployment/web injected\n"},
		{name: "file and stdin", stdin: "---\n---\n", args: []string{"-f", filepath.Join(dir, "a.json"), "-"}, wantReport: "deployment/web injected\n"},
		{name: "namespace label unknown", stdin: deployment, args: []string{"--ignore-namespace-label=false"},
			wantReport: "deployment/web not injected: neither the pod nor namespace shop is labelled trellis.io/inject=enabled\n"},
		{name: "pod opts in", stdin: optedIn, args: []string{"--ignore-namespace-label=false"}, wantReport: "deployment/web injected\n"},
		{name: "namespace in the input", stdin: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    trellis.io/inject: enabled\n---\n" + deployment,
			args: []string{"--ignore-namespace-label=false"}, wantReport: "deployment/web injected\n"},
		{name: "pod security", stdin: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n---\n" + deployment,
			wantReport: "deployment/web not injected: namespace shop enforces the restricted Pod Security Standard (pod-security.kubernetes.io/enforce=restricted), which forbids the NET_ADMIN and NET_RAW capabilities trellis-init needs to redirect traffic\n"},
		{name: "control-plane namespace", stdin: strings.Replace(deployment, `"shop"`, `"trellis-system"`, 1),
			wantReport: "deployment/web not injected: namespace trellis-system is the mesh's control-plane namespace, which is never meshed\n"},
		{name: "bad override", stdin: strings.Replace(deployment, `"app": "web"}`, `"app": "web"}, "annotations": {"config.trellis.io/proxy-cpu-limit": "fast"}`, 1),
			wantReport: `deployment/web not injected: annotation config.trellis.io/proxy-cpu-limit: "fast": not a quantity such as 100m or 64Mi` + "\n"},
		{name: "no template", stdin: "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: r\nspec:\n  schedule: x\n",
			wantReport: "cronjob/r not injected: it has no spec.jobTemplate.spec.template\n"},
		{name: "comments only", stdin: "# nothing here\n", wantReport: ""},
		{name: "missing file", args: []string{"-f", filepath.Join(dir, "missing.yaml")}, wantErr: "no such file or directory"},
		{name: "bad yaml", stdin: "kind: [\n", wantErr: "document 1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, report, err := run(t, tc.stdin, append([]string{"inject"}, tc.args...)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if report != tc.wantReport {
				t.Errorf("report %q, want %q", report, tc.wantReport)
			}
			if strings.HasSuffix(tc.wantReport, " injected\n") && !strings.Contains(out, "name: trellis-proxy") {
				t.Errorf("output not injected:\n%s", out)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	out, _, err := run(t, "", "version")
	if err != nil || !strings.HasPrefix(out, "trellis dev") {
		t.Fatalf("version = %q, %v", out, err)
	}
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"},
	}}
	for _, tc := range []struct {
		info *debug.BuildInfo
		want string
	}{
		{nil, "trellis v1.0.0"},
		{&debug.BuildInfo{GoVersion: "go1.26.8"}, "trellis v1.0.0 go1.26.8"},
		{info, "trellis v1.0.0 (commit 0123456789ab-dirty) go1.26.8"},
	} {
		if got := versionString("v1.0.0", tc.info); got != tc.want {
			t.Errorf("versionString = %q, want %q", got, tc.want)
		}
	}
}
