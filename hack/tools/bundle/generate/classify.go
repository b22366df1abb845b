package generate

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	sigsjson "sigs.k8s.io/json"
)

// input is the kustomize output sorted into what the bundle does with each object.
type input struct {
	csv         *unstructured.Unstructured
	crds        []*unstructured.Unstructured
	typedCRDs   []*apiextensionsv1.CustomResourceDefinition
	samples     []*unstructured.Unstructured
	deployments []*appsv1.Deployment
	rawDeploys  []*unstructured.Unstructured
	rbac        rbacObjects
	// extra are objects OLM accepts in a bundle beside the CSV and CRDs, written as they are.
	extra []*unstructured.Unstructured
	notes []string
}

// standaloneKinds are the kinds, besides the CSV, CRDs and the RBAC the CSV absorbs, that OLM installs from a
// bundle's manifests directory (operator-registry's supported resources).
var standaloneKinds = map[schema.GroupKind]bool{
	{Kind: "Service"}:   true,
	{Kind: "ConfigMap"}: true,
	{Kind: "Secret"}:    true,
	{Group: "monitoring.coreos.com", Kind: "ServiceMonitor"}:     true,
	{Group: "monitoring.coreos.com", Kind: "PrometheusRule"}:     true,
	{Group: "policy", Kind: "PodDisruptionBudget"}:               true,
	{Group: "scheduling.k8s.io", Kind: "PriorityClass"}:          true,
	{Group: "autoscaling.k8s.io", Kind: "VerticalPodAutoscaler"}: true,
	{Group: "networking.k8s.io", Kind: "NetworkPolicy"}:          true,
	{Group: "console.openshift.io", Kind: "ConsoleYAMLSample"}:   true,
	{Group: "console.openshift.io", Kind: "ConsoleQuickStart"}:   true,
	{Group: "console.openshift.io", Kind: "ConsoleCLIDownload"}:  true,
	{Group: "console.openshift.io", Kind: "ConsoleLink"}:         true,
}

// dropped are kinds the install has that a bundle cannot hold, with the reason printed as a note.
var dropped = map[schema.GroupKind]string{
	{Kind: "Namespace"}: "OLM installs into the namespace of the OperatorGroup (suggested: trellis-system)",
	{Group: "cert-manager.io", Kind: "Issuer"}: "cert-manager objects cannot be in a bundle; " +
		"the manager requests the webhook certificate itself at start (docs/olm.md)",
	{Group: "cert-manager.io", Kind: "Certificate"}: "cert-manager objects cannot be in a bundle; " +
		"the manager requests the webhook certificate itself at start (docs/olm.md)",
}

func classify(objs []*unstructured.Unstructured) (*input, error) {
	in := &input{}
	owned, err := in.addCRDs(objs)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		gk := gvk.GroupKind()
		switch {
		case gk.Kind == "CustomResourceDefinition":
		case gvk == schema.GroupVersionKind{Group: "operators.coreos.com", Version: "v1alpha1", Kind: "ClusterServiceVersion"}:
			if in.csv != nil {
				errs = append(errs, errors.New("more than one ClusterServiceVersion base"))
			}
			in.csv = o
		case owned[gvk]:
			in.samples = append(in.samples, o)
		case gk == schema.GroupKind{Group: "apps", Kind: "Deployment"}:
			d := &appsv1.Deployment{}
			if err := decodeStrict(o, d); err != nil {
				errs = append(errs, err)
			} else if err := checkPodSpec(&d.Spec.Template.Spec); err != nil {
				errs = append(errs, fmt.Errorf("Deployment %s: %w", d.Name, err))
			}
			in.deployments = append(in.deployments, d)
			in.rawDeploys = append(in.rawDeploys, o)
		case gvk.Group == "rbac.authorization.k8s.io" || gk == schema.GroupKind{Kind: "ServiceAccount"}:
			errs = append(errs, in.rbac.add(o))
		case gk.Kind == "MutatingWebhookConfiguration" || gk.Kind == "ValidatingWebhookConfiguration":
			errs = append(errs, fmt.Errorf("%s %s: the generator does not turn webhook configurations into "+
				"spec.webhookdefinitions: the injector's MutatingWebhookConfiguration is created by the manager per Mesh "+
				"(docs/olm.md)", gk.Kind, o.GetName()))
		case dropped[gk] != "":
			in.notes = append(in.notes, fmt.Sprintf("left out %s %s: %s", gk.Kind, o.GetName(), dropped[gk]))
		case standaloneKinds[gk]:
			if gk.Kind == "Service" {
				if err := decodeStrict(o, &corev1.Service{}); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			in.extra = append(in.extra, withoutNamespace(o))
		default:
			errs = append(errs, fmt.Errorf("%s %s: OLM cannot install this kind from a bundle", gvk, o.GetName()))
		}
	}
	if in.csv == nil {
		errs = append(errs, errors.New("no ClusterServiceVersion base: build config/manifests, which includes "+
			"bases/trellis.clusterserviceversion.yaml"))
	}
	if len(in.deployments) == 0 {
		errs = append(errs, errors.New("no Deployment: the CSV's install strategy needs the manager's"))
	}
	if len(in.crds) == 0 {
		errs = append(errs, errors.New("no CustomResourceDefinition"))
	}
	sort.SliceStable(in.extra, func(i, j int) bool { return fileName(in.extra[i]) < fileName(in.extra[j]) })
	return in, errors.Join(errs...)
}

// addCRDs records the CRDs and returns the kinds they define: objects of those kinds are samples.
func (in *input) addCRDs(objs []*unstructured.Unstructured) (map[schema.GroupVersionKind]bool, error) {
	owned := map[schema.GroupVersionKind]bool{}
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		// Not strict: CRDs come from controller-gen, and a field newer than this module's API types is not a mistake.
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := fromJSON(o.Object, crd, false); err != nil {
			return nil, fmt.Errorf("CustomResourceDefinition %s: %w", o.GetName(), err)
		}
		in.crds = append(in.crds, o)
		in.typedCRDs = append(in.typedCRDs, crd)
		for _, v := range crd.Spec.Versions {
			owned[schema.GroupVersionKind{Group: crd.Spec.Group, Version: v.Name, Kind: crd.Spec.Names.Kind}] = true
		}
	}
	return owned, nil
}

// decodeStrict decodes o into a typed object and fails on fields the type does not have, naming their paths: a
// misplaced list item (say, a port under volumeMounts) would otherwise vanish silently from the bundle.
func decodeStrict(o *unstructured.Unstructured, into any) error {
	data, err := json.Marshal(o.Object)
	if err != nil {
		return err
	}
	strict, err := sigsjson.UnmarshalStrict(data, into)
	if err != nil {
		return fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err)
	}
	if len(strict) > 0 {
		return fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), errors.Join(strict...))
	}
	return nil
}

// checkPodSpec catches the mistakes the API server or the kubelet would reject only at install time, when OLM
// reports them as a failed CSV: mounts without a path or a volume, and probes on ports the container does not name.
func checkPodSpec(spec *corev1.PodSpec) error {
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = true
	}
	var errs []error
	containers := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	for _, c := range containers {
		ports := map[string]bool{}
		for _, p := range c.Ports {
			ports[p.Name] = true
		}
		for i, m := range c.VolumeMounts {
			if m.MountPath == "" {
				errs = append(errs, fmt.Errorf("container %s: volumeMounts[%d] (%q) has no mountPath", c.Name, i, m.Name))
			}
			if !volumes[m.Name] {
				errs = append(errs, fmt.Errorf("container %s: volumeMounts[%d] names volume %q, which the pod does not have",
					c.Name, i, m.Name))
			}
		}
		for what, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe,
			"startup": c.StartupProbe} {
			if name := probePortName(p); name != "" && !ports[name] {
				errs = append(errs, fmt.Errorf("container %s: the %s probe uses port %q, which the container does not name",
					c.Name, what, name))
			}
		}
	}
	sortErrors(errs)
	return errors.Join(errs...)
}

func probePortName(p *corev1.Probe) string {
	switch {
	case p == nil:
		return ""
	case p.HTTPGet != nil:
		return p.HTTPGet.Port.StrVal
	case p.TCPSocket != nil:
		return p.TCPSocket.Port.StrVal
	}
	return ""
}

func sortErrors(errs []error) {
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
}

// withoutNamespace copies o without metadata.namespace: OLM creates bundle objects in the install namespace.
func withoutNamespace(o *unstructured.Unstructured) *unstructured.Unstructured {
	c := o.DeepCopy()
	c.SetNamespace("")
	return c
}

// rbacObjects are the ServiceAccounts, roles and bindings of the install.
type rbacObjects struct {
	serviceAccounts     []*unstructured.Unstructured
	roles               map[string]*rbacv1.Role
	clusterRoles        map[string]*rbacv1.ClusterRole
	roleBindings        []*rbacv1.RoleBinding
	clusterRoleBindings []*rbacv1.ClusterRoleBinding
	raw                 map[string]*unstructured.Unstructured // by kind/name
}

func (r *rbacObjects) add(o *unstructured.Unstructured) error {
	if r.raw == nil {
		r.raw = map[string]*unstructured.Unstructured{}
		r.roles = map[string]*rbacv1.Role{}
		r.clusterRoles = map[string]*rbacv1.ClusterRole{}
	}
	r.raw[o.GetKind()+"/"+o.GetName()] = o
	var err error
	switch o.GetKind() {
	case "ServiceAccount":
		err = decodeStrict(o, &corev1.ServiceAccount{})
		r.serviceAccounts = append(r.serviceAccounts, o)
	case "Role":
		x := &rbacv1.Role{}
		err = decodeStrict(o, x)
		r.roles[x.Name] = x
	case "ClusterRole":
		x := &rbacv1.ClusterRole{}
		err = decodeStrict(o, x)
		if x.AggregationRule != nil {
			err = errors.Join(err, fmt.Errorf("ClusterRole %s aggregates other roles: a CSV cannot carry that", x.Name))
		}
		r.clusterRoles[x.Name] = x
	case "RoleBinding":
		x := &rbacv1.RoleBinding{}
		err = decodeStrict(o, x)
		r.roleBindings = append(r.roleBindings, x)
	case "ClusterRoleBinding":
		x := &rbacv1.ClusterRoleBinding{}
		err = decodeStrict(o, x)
		r.clusterRoleBindings = append(r.clusterRoleBindings, x)
	default:
		err = fmt.Errorf("%s %s: OLM cannot install this kind from a bundle", o.GroupVersionKind(), o.GetName())
	}
	return err
}
