package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// Defaults of the inject command's flags.
const (
	// DefaultProxyImage is the proxy image `trellis inject` uses unless --proxy-image says otherwise.
	DefaultProxyImage = "trellis.io/proxy:dev"
	// DefaultInitImage is the proxy-init image `trellis inject` uses unless --init-image says otherwise.
	DefaultInitImage = "trellis.io/proxy-init:dev"
)

// injectOptions are the inject command's flags.
type injectOptions struct {
	files                 []string
	mesh                  string
	proxyImage            string
	initImage             string
	controlPlaneNamespace string
	trustDomain           string
	nativeSidecar         bool
	ignoreNamespaceLabel  bool
}

const injectLong = `Inject reads Kubernetes YAML or JSON (several documents, and List kinds) and writes it back to stdout with the
Trellis proxy added to every pod, exactly as the injection webhook adds it in the cluster: Pods, and the pod
templates of Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs and CronJobs. Every
other object, and every pod that is not injected, is written back as it was read; an injected object is written
with its keys sorted and its comments dropped. Injecting injected YAML changes nothing.

Which pods get a proxy follows the webhook's rules: never in kube-system, kube-public, kube-node-lease or the
control-plane namespace; never when the pod template is labelled or annotated trellis.io/inject=disabled; always
when it is labelled or annotated trellis.io/inject=enabled; otherwise when its namespace is labelled
trellis.io/inject=enabled. Offline, namespaces' labels are unknown, so by default (--ignore-namespace-label) every
namespace counts as enabled. With --ignore-namespace-label=false, only Namespace objects in the input count, and a
pod in any other namespace must opt in itself.

Pod annotations config.trellis.io/* override the proxy settings as in the cluster (see docs/injection.md). The
injected pod template's proxy reads its configuration and trust bundle from ConfigMaps the Trellis operator writes
into meshed namespaces, so apply the result where a Mesh selects the namespace.

Files are read in order; "-" or no file at all reads stdin. A folder reads its .yaml, .yml and .json files. A
report of what was injected, and why anything was not, goes to stderr.`

const injectExample = `  # Inject a Deployment and apply it
  trellis inject -f deployment.yaml | kubectl apply -f -

  # Inject everything a kustomization renders, as the kubectl plugin
  kubectl kustomize overlays/prod | kubectl trellis inject -

  # Classic sidecars for clusters older than 1.29
  trellis inject --native-sidecar=false -f app.yaml`

func newInjectCommand() *cobra.Command {
	o := &injectOptions{}
	cmd := &cobra.Command{
		Use:     "inject [-f FILE|-]... [FILE|-]...",
		Short:   "Add the Trellis proxy to the pods of Kubernetes YAML",
		Long:    injectLong,
		Example: injectExample,
		RunE: func(cmd *cobra.Command, args []string) error {
			o.files = append(o.files, args...)
			return o.run(cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.files, "filename", "f", nil, `File or folder to read; "-" is stdin (default: stdin).`)
	f.StringVar(&o.mesh, "mesh", inject.DefaultMeshName, "Name of the Mesh the pods join.")
	f.StringVar(&o.proxyImage, "proxy-image", DefaultProxyImage, "Proxy container image.")
	f.StringVar(&o.initImage, "init-image", DefaultInitImage, "proxy-init container image.")
	f.StringVar(&o.controlPlaneNamespace, "control-plane-namespace", inject.DefaultControlPlaneNamespace,
		"The Mesh's control-plane namespace: where the identity service runs; its pods are never injected.")
	f.StringVar(&o.trustDomain, "trust-domain", inject.DefaultTrustDomain, "The Mesh's SPIFFE trust domain.")
	f.BoolVar(&o.nativeSidecar, "native-sidecar", true,
		"Run the proxy as a native sidecar (Kubernetes 1.29 and later); false makes it the first regular container.")
	f.BoolVar(&o.ignoreNamespaceLabel, "ignore-namespace-label", true,
		"Treat every namespace as labelled trellis.io/inject=enabled, since offline its labels are unknown.")
	return cmd
}

func (o *injectOptions) run(stdin io.Reader, stdout, stderr io.Writer) error {
	var docs [][]byte
	files := o.files
	if len(files) == 0 {
		files = []string{"-"}
	}
	for _, name := range files {
		d, err := readDocuments(name, stdin)
		if err != nil {
			return err
		}
		docs = append(docs, d...)
	}
	j := &injector{
		params:               o.params(),
		controlPlane:         o.controlPlaneNamespace,
		ignoreNamespaceLabel: o.ignoreNamespaceLabel,
		report:               stderr,
	}
	out, err := j.documents(docs)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// params are the injection parameters of a Mesh with the flags' settings and the API defaults otherwise.
func (o *injectOptions) params() inject.Params {
	mesh := &meshv1alpha1.Mesh{
		ObjectMeta: metav1.ObjectMeta{Name: o.mesh},
		Spec: meshv1alpha1.MeshSpec{
			ControlPlaneNamespace: o.controlPlaneNamespace,
			TrustDomain:           o.trustDomain,
			Proxy:                 meshv1alpha1.ProxySpec{NativeSidecar: ptr.To(o.nativeSidecar)},
		},
	}
	return inject.ParamsFromMesh(mesh, inject.Images{Proxy: o.proxyImage, ProxyInit: o.initImage})
}

// readDocuments splits a file, a folder's files or stdin ("-") into YAML documents.
func readDocuments(name string, stdin io.Reader) ([][]byte, error) {
	if name == "-" {
		return splitDocuments(stdin, "stdin")
	}
	st, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return splitDocuments(f, name)
	}
	entries, err := os.ReadDir(name)
	if err != nil {
		return nil, err
	}
	var docs [][]byte
	for _, e := range entries {
		switch filepath.Ext(e.Name()) {
		case ".yaml", ".yml", ".json":
			d, err := readDocuments(filepath.Join(name, e.Name()), stdin)
			if err != nil {
				return nil, err
			}
			docs = append(docs, d...)
		}
	}
	return docs, nil
}

// splitDocuments returns the YAML documents of r; documents of only white space are dropped.
func splitDocuments(r io.Reader, name string) ([][]byte, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		if !bytes.HasSuffix(doc, []byte("\n")) {
			doc = append(doc, '\n')
		}
		docs = append(docs, doc)
	}
}

// injector injects the pods of YAML documents.
type injector struct {
	params               inject.Params
	controlPlane         string
	ignoreNamespaceLabel bool
	// namespaces are the Namespace objects of the input, by name.
	namespaces map[string]*corev1.Namespace
	report     io.Writer
}

// documents returns the documents, injected where they hold pods, as one YAML stream.
func (j *injector) documents(docs [][]byte) ([]byte, error) {
	objs := make([]map[string]any, len(docs))
	j.namespaces = map[string]*corev1.Namespace{}
	for i, doc := range docs {
		obj, err := decodeObject(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		objs[i] = obj
		j.collectNamespaces(obj)
	}
	var out bytes.Buffer
	for i, doc := range docs {
		if i > 0 {
			out.WriteString("---\n")
		}
		if objs[i] == nil || !j.object(objs[i]) {
			out.Write(doc)
			continue
		}
		data, err := json.Marshal(objs[i])
		if err != nil {
			return nil, err
		}
		if data, err = yaml.JSONToYAML(data); err != nil {
			return nil, err
		}
		out.Write(data)
	}
	return out.Bytes(), nil
}

// decodeObject returns a document's object, or nil for a document that is not an object (comments only, a
// scalar), which passes through as it is.
func decodeObject(doc []byte) (map[string]any, error) {
	data, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")) {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, err
	}
	return obj, nil
}

// collectNamespaces remembers the input's Namespace objects, in Lists too.
func (j *injector) collectNamespaces(obj map[string]any) {
	if items, ok := listItems(obj); ok {
		for _, item := range items {
			if m, ok := item.(map[string]any); ok {
				j.collectNamespaces(m)
			}
		}
		return
	}
	if gk := groupKind(obj); gk != (schema.GroupKind{Kind: "Namespace"}) {
		return
	}
	ns := &corev1.Namespace{}
	if data, err := json.Marshal(obj); err == nil && json.Unmarshal(data, ns) == nil && ns.Name != "" {
		j.namespaces[ns.Name] = ns
	}
}

// templatePaths are where the pod template of each workload kind is.
var templatePaths = map[schema.GroupKind][]string{
	{Kind: "ReplicationController"}:           {"spec", "template"},
	{Group: "apps", Kind: "Deployment"}:       {"spec", "template"},
	{Group: "apps", Kind: "StatefulSet"}:      {"spec", "template"},
	{Group: "apps", Kind: "DaemonSet"}:        {"spec", "template"},
	{Group: "apps", Kind: "ReplicaSet"}:       {"spec", "template"},
	{Group: "extensions", Kind: "Deployment"}: {"spec", "template"},
	{Group: "extensions", Kind: "DaemonSet"}:  {"spec", "template"},
	{Group: "extensions", Kind: "ReplicaSet"}: {"spec", "template"},
	{Group: "batch", Kind: "Job"}:             {"spec", "template"},
	{Group: "batch", Kind: "CronJob"}:         {"spec", "jobTemplate", "spec", "template"},
}

// object injects obj's pods in place and reports whether it changed.
func (j *injector) object(obj map[string]any) bool {
	if items, ok := listItems(obj); ok {
		changed := false
		for _, item := range items {
			if m, ok := item.(map[string]any); ok && j.object(m) {
				changed = true
			}
		}
		return changed
	}
	gk := groupKind(obj)
	meta, _ := obj["metadata"].(map[string]any)
	name := fmt.Sprintf("%s/%s", strings.ToLower(gk.Kind), objectName(meta))
	namespace, _ := meta["namespace"].(string)
	if gk == (schema.GroupKind{Kind: "Pod"}) {
		tmpl := map[string]any{"metadata": obj["metadata"], "spec": obj["spec"]}
		if !j.template(name, namespace, tmpl) {
			return false
		}
		obj["metadata"], obj["spec"] = tmpl["metadata"], tmpl["spec"]
		return true
	}
	path, ok := templatePaths[gk]
	if !ok {
		return false
	}
	parent := obj
	for _, key := range path[:len(path)-1] {
		if parent, ok = parent[key].(map[string]any); !ok {
			j.reportf("%s not injected: it has no %s", name, strings.Join(path, "."))
			return false
		}
	}
	tmpl, ok := parent[path[len(path)-1]].(map[string]any)
	if !ok {
		j.reportf("%s not injected: it has no %s", name, strings.Join(path, "."))
		return false
	}
	return j.template(name, namespace, tmpl)
}

// template injects a pod template, an object with metadata and spec, in place. The change is computed on the
// typed pod template and applied to the original as a strategic merge patch, so that fields this build does not
// know survive and nothing else is rewritten.
func (j *injector) template(name, namespace string, tmpl map[string]any) bool {
	original, err := json.Marshal(tmpl)
	if err != nil {
		j.reportf("%s not injected: %v", name, err)
		return false
	}
	pod := &corev1.PodTemplateSpec{}
	if err := json.Unmarshal(original, pod); err != nil {
		j.reportf("%s not injected: not a valid pod template: %v", name, err)
		return false
	}
	if ok, reason := inject.ShouldInject(j.namespace(namespace), &pod.ObjectMeta, j.controlPlane); !ok {
		j.reportf("%s not injected: %s", name, reason)
		return false
	}
	if err := inject.CheckNamespace(j.namespaces[namespace]); err != nil {
		j.reportf("%s not injected: %v", name, err)
		return false
	}
	before, err := json.Marshal(pod)
	if err != nil {
		j.reportf("%s not injected: %v", name, err)
		return false
	}
	changed, err := inject.InjectPodSpec(&pod.ObjectMeta, &pod.Spec, j.params)
	switch {
	case err != nil:
		j.reportf("%s not injected: %v", name, err)
		return false
	case !changed:
		j.reportf("%s already injected", name)
		return false
	}
	merged, err := mergeInjection(original, before, pod)
	if err != nil {
		j.reportf("%s not injected: %v", name, err)
		return false
	}
	for k := range tmpl {
		delete(tmpl, k)
	}
	for k, v := range merged {
		tmpl[k] = v
	}
	j.reportf("%s injected", name)
	return true
}

// mergeInjection applies the difference between the typed template before injection and the injected one to the
// original template.
func mergeInjection(original, before []byte, injected *corev1.PodTemplateSpec) (map[string]any, error) {
	after, err := json.Marshal(injected)
	if err != nil {
		return nil, err
	}
	merged, err := inject.ApplyChange(original, before, after, corev1.PodTemplateSpec{})
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(merged))
	dec.UseNumber()
	var out map[string]any
	if err := dec.Decode(&out); err != nil {
		return nil, err
	}
	return out, nil
}

// namespace is what is known offline of a namespace: everything is labelled trellis.io/inject=enabled with
// --ignore-namespace-label, else what the input's Namespace objects say.
func (j *injector) namespace(name string) *corev1.Namespace {
	if j.ignoreNamespaceLabel {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: name, Labels: map[string]string{wellknown.LabelInject: wellknown.InjectEnabled},
		}}
	}
	if ns, ok := j.namespaces[name]; ok {
		return ns
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func (j *injector) reportf(format string, args ...any) {
	fmt.Fprintf(j.report, format+"\n", args...)
}

// listItems returns the items of a List kind (v1 List, or any <Kind>List with items).
func listItems(obj map[string]any) ([]any, bool) {
	kind, _ := obj["kind"].(string)
	items, ok := obj["items"].([]any)
	return items, ok && strings.HasSuffix(kind, "List")
}

func groupKind(obj map[string]any) schema.GroupKind {
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		return schema.GroupKind{}
	}
	return schema.GroupKind{Group: gv.Group, Kind: kind}
}

func objectName(meta map[string]any) string {
	if name, _ := meta["name"].(string); name != "" {
		return name
	}
	if name, _ := meta["generateName"].(string); name != "" {
		return name
	}
	return "<unnamed>"
}
