package generate_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/operators/v1alpha1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/trellis-mesh/trellis/hack/tools/bundle/generate"
	"github.com/trellis-mesh/trellis/hack/tools/bundle/validate"
)

// repoRoot is the Trellis checkout this tools module lives in (hack/tools/bundle/generate -> four levels up).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "PROJECT")); err != nil {
		t.Fatalf("not the repository root: %s: %v", root, err)
	}
	return root
}

func releaseOptions(t *testing.T, root string) generate.Options {
	t.Helper()
	icon, err := os.ReadFile(filepath.Join(root, "config", "manifests", "icon.svg"))
	if err != nil {
		t.Fatal(err)
	}
	return generate.Options{
		Version:        "0.1.0",
		CreatedAt:      "2026-01-01T00:00:00Z",
		ScorecardImage: "quay.io/operator-framework/scorecard-test:v1.42.0",
		Icon:           icon,
		Requires:       map[string]string{"cert-manager": ">=1.11.0 <2.0.0"},
		Images: map[string]string{
			"trellis.io/manager":    "registry.example/trellis/manager:v0.1.0",
			"trellis.io/proxy":      "registry.example/trellis/proxy:v0.1.0",
			"trellis.io/proxy-init": "registry.example/trellis/proxy-init:v0.1.0",
		},
	}
}

// TestBundleFromConfig generates the bundle from the repository's config/, validates it with the operator-sdk
// validators, and checks that nothing of the install was lost on the way: every CRD, every RBAC rule with its
// scope, every Service, the Deployment and the samples.
func TestBundleFromConfig(t *testing.T) {
	root := repoRoot(t)
	objs, err := generate.Build(filepath.Join(root, "config", "manifests"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := generate.Generate(objs, releaseOptions(t, root))
	if err != nil {
		t.Fatalf("generating the bundle from config/manifests: %v", err)
	}
	dir := t.TempDir()
	if err := b.Write(filepath.Join(dir, "bundle"), filepath.Join(dir, "bundle.Dockerfile")); err != nil {
		t.Fatal(err)
	}
	report, err := validate.Bundle(filepath.Join(dir, "bundle"), validate.Options{
		K8sVersion: "1.34", Optional: true, Dockerfile: filepath.Join(dir, "bundle.Dockerfile")})
	if err != nil {
		t.Fatal(err)
	}
	if report.Errors() > 0 {
		var out bytes.Buffer
		report.Print(&out)
		t.Fatalf("the bundle does not validate:\n%s", out.String())
	}

	bundle, err := manifests.GetBundleFromDir(filepath.Join(dir, "bundle"))
	if err != nil {
		t.Fatal(err)
	}
	install, err := generate.Build(filepath.Join(root, "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("CRDs", func(t *testing.T) { checkCRDs(t, root, bundle) })
	t.Run("RBAC", func(t *testing.T) { checkRBAC(t, install, bundle) })
	t.Run("Services", func(t *testing.T) { checkServices(t, install, bundle) })
	t.Run("Deployment", func(t *testing.T) { checkDeployment(t, install, bundle.CSV) })
	t.Run("Examples", func(t *testing.T) { checkExamples(t, root, bundle.CSV) })
	t.Run("Deterministic", func(t *testing.T) {
		again, err := generate.Generate(objs, releaseOptions(t, root))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(again.Files, b.Files) || !bytes.Equal(again.Dockerfile, b.Dockerfile) {
			t.Error("two runs on the same input differ")
		}
	})
}

// checkCRDs: every CRD file of config/crd/bases is in the bundle with the same spec, and owned by the CSV.
func checkCRDs(t *testing.T, root string, bundle *manifests.Bundle) {
	files, err := filepath.Glob(filepath.Join(root, "config", "crd", "bases", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in config/crd/bases: %v", err)
	}
	inBundle := map[string]any{}
	for _, o := range bundle.Objects {
		if o.GetKind() == "CustomResourceDefinition" {
			inBundle[o.GetName()] = o.Object["spec"]
		}
	}
	owned := map[string]bool{}
	for _, d := range bundle.CSV.Spec.CustomResourceDefinitions.Owned {
		owned[d.Name+"/"+d.Version] = true
		if d.DisplayName == "" || d.Description == "" || len(d.SpecDescriptors) == 0 || len(d.StatusDescriptors) == 0 {
			t.Errorf("owned CRD %s lacks a display name, description or descriptors", d.Name)
		}
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := generate.Decode(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, crd := range objs {
			spec, ok := inBundle[crd.GetName()]
			if !ok {
				t.Errorf("CRD %s (%s) is not in the bundle", crd.GetName(), filepath.Base(f))
				continue
			}
			if !reflect.DeepEqual(normalize(t, spec), normalize(t, crd.Object["spec"])) {
				t.Errorf("CRD %s: the bundle's spec differs from %s", crd.GetName(), filepath.Base(f))
			}
			versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
			for _, v := range versions {
				name := v.(map[string]any)["name"].(string)
				if !owned[crd.GetName()+"/"+name] {
					t.Errorf("the CSV does not own CRD %s version %s", crd.GetName(), name)
				}
			}
		}
	}
	if len(inBundle) != len(bundle.CSV.Spec.CustomResourceDefinitions.Owned) {
		t.Errorf("the bundle has %d CRDs but the CSV owns %d", len(inBundle), len(bundle.CSV.Spec.CustomResourceDefinitions.Owned))
	}
}

// checkRBAC: the rules of a ClusterRole bound to the manager's ServiceAccount by a ClusterRoleBinding are in
// clusterPermissions, those of a Role bound by a RoleBinding in permissions, unbound roles are bundle objects with
// the same rules, and the CSV grants nothing that config/ does not.
func checkRBAC(t *testing.T, install []*unstructured.Unstructured, bundle *manifests.Bundle) {
	sa := ""
	clusterRoles, roles := map[string][]rbacv1.PolicyRule{}, map[string][]rbacv1.PolicyRule{}
	var crbs []rbacv1.ClusterRoleBinding
	var rbs []rbacv1.RoleBinding
	for _, o := range install {
		switch o.GetKind() {
		case "Deployment":
			sa, _, _ = unstructured.NestedString(o.Object, "spec", "template", "spec", "serviceAccountName")
		case "ClusterRole":
			var r rbacv1.ClusterRole
			convert(t, o, &r)
			clusterRoles[r.Name] = r.Rules
		case "Role":
			var r rbacv1.Role
			convert(t, o, &r)
			roles[r.Name] = r.Rules
		case "ClusterRoleBinding":
			var b rbacv1.ClusterRoleBinding
			convert(t, o, &b)
			crbs = append(crbs, b)
		case "RoleBinding":
			var b rbacv1.RoleBinding
			convert(t, o, &b)
			rbs = append(rbs, b)
		}
	}
	if sa == "" || len(clusterRoles) == 0 {
		t.Fatal("config/default has no manager ServiceAccount or no ClusterRole")
	}
	strategy := bundle.CSV.Spec.InstallStrategy.StrategySpec
	csvCluster, csvLocal := rulesOf(strategy.ClusterPermissions, sa), rulesOf(strategy.Permissions, sa)
	granted := map[string]bool{}
	bound := map[string]bool{}
	toManager := func(subjects []rbacv1.Subject) bool {
		for _, s := range subjects {
			if s.Kind == "ServiceAccount" && s.Name == sa {
				return true
			}
		}
		return false
	}
	for _, b := range crbs {
		if !toManager(b.Subjects) {
			continue
		}
		bound["ClusterRole/"+b.RoleRef.Name] = true
		for _, r := range clusterRoles[b.RoleRef.Name] {
			if !containsRule(csvCluster, r) {
				t.Errorf("ClusterRole %s: rule %s is not in the CSV's clusterPermissions", b.RoleRef.Name, ruleString(r))
			}
			granted[ruleString(r)+"/cluster"] = true
		}
	}
	for _, b := range rbs {
		if !toManager(b.Subjects) {
			continue
		}
		rules := roles[b.RoleRef.Name]
		if b.RoleRef.Kind == "ClusterRole" {
			rules = clusterRoles[b.RoleRef.Name]
		}
		bound[b.RoleRef.Kind+"/"+b.RoleRef.Name] = true
		for _, r := range rules {
			if !containsRule(csvLocal, r) {
				t.Errorf("%s %s: rule %s is not in the CSV's permissions", b.RoleRef.Kind, b.RoleRef.Name, ruleString(r))
			}
			granted[ruleString(r)+"/local"] = true
		}
	}
	for _, r := range csvCluster {
		if !granted[ruleString(r)+"/cluster"] {
			t.Errorf("the CSV's clusterPermissions grant %s, which config/ does not", ruleString(r))
		}
	}
	for _, r := range csvLocal {
		if !granted[ruleString(r)+"/local"] {
			t.Errorf("the CSV's permissions grant %s, which config/ does not", ruleString(r))
		}
	}
	standalone := map[string][]rbacv1.PolicyRule{}
	for _, o := range bundle.Objects {
		if o.GetKind() == "ClusterRole" || o.GetKind() == "Role" {
			var r rbacv1.ClusterRole
			convert(t, o, &r)
			standalone[o.GetKind()+"/"+o.GetName()] = r.Rules
		}
	}
	for kind, all := range map[string]map[string][]rbacv1.PolicyRule{"ClusterRole": clusterRoles, "Role": roles} {
		for name, rules := range all {
			key := kind + "/" + name
			if bound[key] {
				continue
			}
			if got, ok := standalone[key]; !ok || !reflect.DeepEqual(got, rules) {
				t.Errorf("%s is bound to nothing of the manager's, so it must be a bundle object with the same rules", key)
			}
		}
	}
}

func rulesOf(perms []v1alpha1.StrategyDeploymentPermissions, sa string) []rbacv1.PolicyRule {
	for _, p := range perms {
		if p.ServiceAccountName == sa {
			return p.Rules
		}
	}
	return nil
}

func containsRule(rules []rbacv1.PolicyRule, r rbacv1.PolicyRule) bool {
	for _, x := range rules {
		if reflect.DeepEqual(x, r) {
			return true
		}
	}
	return false
}

func ruleString(r rbacv1.PolicyRule) string {
	data, _ := json.Marshal(r)
	return string(data)
}

func checkServices(t *testing.T, install []*unstructured.Unstructured, bundle *manifests.Bundle) {
	services := map[string]any{}
	for _, o := range bundle.Objects {
		if o.GetKind() == "Service" {
			if o.GetNamespace() != "" {
				t.Errorf("Service %s keeps namespace %s: OLM must create it in the install namespace", o.GetName(), o.GetNamespace())
			}
			services[o.GetName()] = o.Object["spec"]
		}
	}
	n := 0
	for _, o := range install {
		if o.GetKind() != "Service" {
			continue
		}
		n++
		if spec, ok := services[o.GetName()]; !ok || !reflect.DeepEqual(normalize(t, spec), normalize(t, o.Object["spec"])) {
			t.Errorf("Service %s is missing from the bundle or differs", o.GetName())
		}
	}
	if n == 0 {
		t.Error("config/default has no Service")
	}
}

// checkDeployment: the CSV's Deployment is config/'s with only the images replaced, and relatedImages lists them.
func checkDeployment(t *testing.T, install []*unstructured.Unstructured, csv *v1alpha1.ClusterServiceVersion) {
	deployments := csv.Spec.InstallStrategy.StrategySpec.DeploymentSpecs
	if len(deployments) != 1 {
		t.Fatalf("the CSV has %d deployments, want the manager's", len(deployments))
	}
	var want map[string]any
	for _, o := range install {
		if o.GetKind() == "Deployment" {
			want = o.Object["spec"].(map[string]any)
			if deployments[0].Name != o.GetName() {
				t.Errorf("deployment name %s, want %s", deployments[0].Name, o.GetName())
			}
		}
	}
	data, err := json.Marshal(deployments[0].Spec)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	wantJSON, _ := json.Marshal(want)
	gotJSON := string(data)
	for _, name := range []string{"manager", "proxy", "proxy-init"} {
		gotJSON = strings.ReplaceAll(gotJSON, "registry.example/trellis/"+name+":v0.1.0", "trellis.io/"+name+":dev")
	}
	var a, b map[string]any
	_ = json.Unmarshal(wantJSON, &a)
	_ = json.Unmarshal([]byte(gotJSON), &b)
	if !reflect.DeepEqual(pruneEmpty(a), pruneEmpty(b)) {
		t.Errorf("the CSV's Deployment differs from config/'s beyond the images:\n got %s\nwant %s", gotJSON, wantJSON)
	}
	related := map[string]string{}
	for _, r := range csv.Spec.RelatedImages {
		related[r.Name] = r.Image
	}
	for _, name := range []string{"manager", "proxy", "proxy-init"} {
		if related[name] != "registry.example/trellis/"+name+":v0.1.0" {
			t.Errorf("relatedImages[%s] = %q", name, related[name])
		}
	}
	if csv.Annotations["containerImage"] != related["manager"] {
		t.Errorf("containerImage %q is not the manager image", csv.Annotations["containerImage"])
	}
}

// pruneEmpty drops the empty values that a round trip through the typed Deployment adds (strategy: {},
// creationTimestamp: null, resources: {}), which are no difference.
func pruneEmpty(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			e = pruneEmpty(e)
			if m, ok := e.(map[string]any); e == nil || (ok && len(m) == 0) {
				continue
			}
			out[k] = e
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = pruneEmpty(e)
		}
		return out
	}
	return v
}

func checkExamples(t *testing.T, root string, csv *v1alpha1.ClusterServiceVersion) {
	var examples []map[string]any
	if err := json.Unmarshal([]byte(csv.Annotations["alm-examples"]), &examples); err != nil {
		t.Fatalf("alm-examples: %v", err)
	}
	samples, err := generate.Build(filepath.Join(root, "config", "samples"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range samples {
		found := false
		for _, e := range examples {
			found = found || reflect.DeepEqual(normalize(t, e), normalize(t, s.Object))
		}
		if !found {
			t.Errorf("sample %s %s is not in alm-examples", s.GetKind(), s.GetName())
		}
	}
}

// normalize is v after a JSON round trip, so that int64 and float64 numbers compare equal.
func normalize(t *testing.T, v any) any {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func convert(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
		t.Fatal(err)
	}
}
