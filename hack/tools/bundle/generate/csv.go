package generate

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/operator-framework/api/pkg/operators/v1alpha1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// buildCSV completes the base CSV: name and version, the install strategy (Deployments and permissions), owned
// CRDs with their descriptors, alm-examples, relatedImages and the annotations that depend on the release. It also
// moves the RBAC objects the CSV does not absorb into in.extra.
func buildCSV(in *input, opts Options) (map[string]any, error) {
	csv := in.csv.DeepCopy()
	ns := in.rawDeploys[0].GetNamespace()
	sas := map[string]bool{}
	var errs []error
	for i, d := range in.deployments {
		if in.rawDeploys[i].GetNamespace() != ns {
			errs = append(errs, fmt.Errorf("Deployments %s and %s are in different namespaces: OLM installs all of a "+
				"CSV's Deployments into one", in.rawDeploys[0].GetName(), d.Name))
		}
		sa := d.Spec.Template.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		sas[sa] = true
	}
	cluster, local, extra, err := in.rbac.permissions(sas, ns)
	errs = append(errs, err)
	in.extra = append(in.extra, extra...)
	sort.SliceStable(in.extra, func(i, j int) bool { return fileName(in.extra[i]) < fileName(in.extra[j]) })

	deployments, images, err := deploymentSpecs(in.rawDeploys, opts.Images)
	errs = append(errs, err)
	owned, err := ownedCRDs(csv, in.typedCRDs)
	errs = append(errs, err)
	examples, err := almExamples(in.samples)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	name := opts.Package + ".v" + opts.Version
	csv.SetName(name)
	csv.SetNamespace("")
	unstructured.RemoveNestedField(csv.Object, "metadata", "creationTimestamp")
	annotations := csv.GetAnnotations()
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations["alm-examples"] = examples
	annotations["createdAt"] = opts.CreatedAt
	annotations["containerImage"] = managerImage(deployments[0].(map[string]any)["spec"].(map[string]any))
	csv.SetAnnotations(annotations)

	spec := csv.Object["spec"].(map[string]any)
	spec["version"] = opts.Version
	delete(spec, "replaces")
	if opts.Replaces != "" {
		spec["replaces"] = opts.Replaces
	}
	spec["relatedImages"] = images
	spec["customresourcedefinitions"] = map[string]any{"owned": mustJSON(owned)}
	strategy := map[string]any{"deployments": deployments}
	if len(cluster) > 0 {
		strategy["clusterPermissions"] = mustJSON(cluster)
	}
	if len(local) > 0 {
		strategy["permissions"] = mustJSON(local)
	}
	spec["install"] = map[string]any{"strategy": "deployment", "spec": strategy}
	if _, ok := spec["icon"]; !ok && len(opts.Icon) > 0 {
		spec["icon"] = []any{map[string]any{"base64data": base64(opts.Icon), "mediatype": "image/svg+xml"}}
	}
	if w, ok := spec["webhookdefinitions"].([]any); ok && len(w) > 0 {
		return nil, errors.New("the base CSV declares webhookdefinitions: the injector's webhook is created by the " +
			"manager per Mesh, not by OLM (docs/olm.md)")
	}
	if err := decodeStrict(csv, &v1alpha1.ClusterServiceVersion{}); err != nil {
		return nil, fmt.Errorf("the completed CSV: %w", err)
	}
	return csv.Object, nil
}

// deploymentSpecs turns the Deployments into the CSV's deployment specs, with every image replaced by its release
// reference, and lists those images as relatedImages (named after the last element of the repository).
func deploymentSpecs(deploys []*unstructured.Unstructured, mapping map[string]string) ([]any, []any, error) {
	var out []any
	related := map[string]string{}
	var errs []error
	for _, d := range deploys {
		spec, _, _ := unstructured.NestedMap(d.Object, "spec")
		pod, _, _ := unstructured.NestedMap(spec, "template", "spec")
		for _, field := range []string{"initContainers", "containers"} {
			containers, _, _ := unstructured.NestedSlice(pod, field)
			for _, c := range containers {
				errs = append(errs, rewriteImages(c.(map[string]any), mapping, related))
			}
			if containers != nil {
				pod[field] = containers
			}
		}
		if err := unstructured.SetNestedMap(spec, pod, "template", "spec"); err != nil {
			return nil, nil, err
		}
		entry := map[string]any{"name": d.GetName(), "spec": spec}
		if l := d.GetLabels(); len(l) > 0 {
			entry["label"] = toAnyMap(l)
		}
		out = append(out, entry)
	}
	names := make([]string, 0, len(related))
	for n := range related {
		names = append(names, n)
	}
	sort.Strings(names)
	images := make([]any, 0, len(names))
	for _, n := range names {
		images = append(images, map[string]any{"name": n, "image": related[n]})
	}
	return out, images, errors.Join(errs...)
}

// rewriteImages replaces the container's image and the values of its --<name>-image=<ref> arguments (the images
// the manager injects) with their release references, recording each in related.
func rewriteImages(c map[string]any, mapping map[string]string, related map[string]string) error {
	var errs []error
	replace := func(ref string) string {
		repo := repository(ref)
		to, ok := mapping[repo]
		if !ok {
			errs = append(errs, fmt.Errorf("container %v: image %s has no release reference (add -image %s=<ref>)",
				c["name"], ref, repo))
			return ref
		}
		related[repo[strings.LastIndex(repo, "/")+1:]] = to
		return to
	}
	if img, ok := c["image"].(string); ok {
		c["image"] = replace(img)
	}
	for _, field := range []string{"command", "args"} {
		list, _ := c[field].([]any)
		for i, a := range list {
			s, _ := a.(string)
			flag, value, ok := strings.Cut(s, "=")
			if ok && strings.HasPrefix(flag, "-") && strings.HasSuffix(flag, "-image") {
				list[i] = flag + "=" + replace(value)
			}
		}
	}
	return errors.Join(errs...)
}

// repository strips the tag and digest from an image reference.
func repository(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// managerImage is the image of the container named manager (else the first container) of a Deployment spec.
func managerImage(spec map[string]any) string {
	containers, _, _ := unstructured.NestedSlice(spec, "template", "spec", "containers")
	image := ""
	for i, c := range containers {
		m := c.(map[string]any)
		if i == 0 || m["name"] == "manager" {
			image, _ = m["image"].(string)
		}
	}
	return image
}

// ownedCRDs lists every served version of every CRD, completed with the base CSV's display name, description,
// resources and descriptors for it. A descriptor whose path the CRD schema lacks is an error (the UI would show an
// empty field); a descriptor without a description takes the schema's.
func ownedCRDs(csv *unstructured.Unstructured, crds []*apiextensionsv1.CustomResourceDefinition) ([]v1alpha1.CRDDescription, error) {
	raw, _, _ := unstructured.NestedSlice(csv.Object, "spec", "customresourcedefinitions", "owned")
	var base []v1alpha1.CRDDescription
	if err := fromJSON(raw, &base, true); err != nil {
		return nil, fmt.Errorf("base CSV spec.customresourcedefinitions.owned: %w", err)
	}
	matched := make([]bool, len(base))
	var out []v1alpha1.CRDDescription
	var errs []error
	sorted := append([]*apiextensionsv1.CustomResourceDefinition{}, crds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, crd := range sorted {
		for _, v := range crd.Spec.Versions {
			if !v.Served {
				continue
			}
			d := v1alpha1.CRDDescription{}
			for i, b := range base {
				if b.Name == crd.Name && (b.Version == "" || b.Version == v.Name) {
					d, matched[i] = b, true
				}
			}
			d.Name, d.Version, d.Kind = crd.Name, v.Name, crd.Spec.Names.Kind
			var root *apiextensionsv1.JSONSchemaProps
			if v.Schema != nil {
				root = v.Schema.OpenAPIV3Schema
			}
			if d.DisplayName == "" {
				d.DisplayName = crd.Spec.Names.Kind
			}
			if d.Description == "" && root != nil {
				d.Description = summary(root.Description)
			}
			for i := range d.SpecDescriptors {
				errs = append(errs, describe(crd.Name, root, "spec", d.SpecDescriptors[i].Path, &d.SpecDescriptors[i].Description))
			}
			for i := range d.StatusDescriptors {
				errs = append(errs, describe(crd.Name, root, "status", d.StatusDescriptors[i].Path,
					&d.StatusDescriptors[i].Description))
			}
			out = append(out, d)
		}
	}
	for i, ok := range matched {
		if !ok {
			errs = append(errs, fmt.Errorf("base CSV describes CRD %s %s, which the install does not have", base[i].Name,
				base[i].Version))
		}
	}
	return out, errors.Join(errs...)
}

// describe checks that path (dot-separated, [N] for list items) exists under spec or status of the schema and
// fills an empty description from it.
func describe(crd string, root *apiextensionsv1.JSONSchemaProps, top, path string, description *string) error {
	s := root
	for _, seg := range append([]string{top}, strings.Split(path, ".")...) {
		name, index, _ := strings.Cut(seg, "[")
		var next *apiextensionsv1.JSONSchemaProps
		if s != nil {
			if p, ok := s.Properties[name]; ok {
				next = &p
			}
		}
		if next != nil && index != "" {
			if next.Items == nil || next.Items.Schema == nil {
				next = nil
			} else {
				next = next.Items.Schema
			}
		}
		if next == nil {
			return fmt.Errorf("%s: descriptor %s.%s: no such field in the CRD schema", crd, top, path)
		}
		s = next
	}
	if *description == "" {
		*description = summary(s.Description)
	}
	return nil
}

// summary is the first paragraph of a schema description, on one line.
func summary(s string) string {
	first, _, _ := strings.Cut(strings.TrimSpace(s), "\n\n")
	return strings.Join(strings.Fields(first), " ")
}

// almExamples is the samples as the indented JSON array OLM shows as "create" templates.
func almExamples(samples []*unstructured.Unstructured) (string, error) {
	if len(samples) == 0 {
		return "", errors.New("no samples of the owned CRDs: config/manifests must include config/samples")
	}
	list := make([]any, 0, len(samples))
	for _, s := range samples {
		list = append(list, s.Object)
	}
	data, err := json.MarshalIndent(list, "", "  ")
	return string(data), err
}
