package inject

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/identity/workload"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var testImages = Images{Proxy: "trellis.io/proxy:test", ProxyInit: "trellis.io/proxy-init:test"}

// readPod reads testdata/<name>.in.yaml, a pod or pod template.
func readPod(t *testing.T, name string) *corev1.PodTemplateSpec {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name+".in.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.PodTemplateSpec{}
	if err := yaml.UnmarshalStrict(data, pod); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return pod
}

func marshal(t *testing.T, pod *corev1.PodTemplateSpec) []byte {
	t.Helper()
	out, err := yaml.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// golden compares got with testdata/<name>.golden.yaml.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden.yaml")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/inject -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run with -update after checking the change):\n--- got\n%s", path, got)
	}
}

func classic(p Params) Params { p.NativeSidecar = false; return p }

// nodeProxy is p in DaemonSet mode.
func nodeProxy(p Params) Params { p.NodeProxy = true; return p }

// customMesh is a Mesh that sets every proxy setting.
func customMesh() *meshv1alpha1.Mesh {
	return &meshv1alpha1.Mesh{
		ObjectMeta: metav1.ObjectMeta{Name: "prod"},
		Spec: meshv1alpha1.MeshSpec{
			ControlPlaneNamespace: "mesh-system",
			TrustDomain:           "prod.example.com",
			Proxy: meshv1alpha1.ProxySpec{
				Image:           "registry.example.com/trellis/proxy:v1.0.0",
				ImagePullPolicy: corev1.PullAlways,
				Resources: &corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				LogLevel:          "warn",
				Ports:             meshv1alpha1.ProxyPorts{Outbound: 15001, Inbound: 15006, Admin: 15020},
				SkipInboundPorts:  []int32{9100},
				SkipOutboundPorts: []int32{443, 5432},
				OpaquePorts:       []int32{5432},
				IgnoredCIDRs:      []string{"169.254.169.254/32", "fd00::/8"},
				NativeSidecar:     ptr.To(true),
			},
		},
	}
}

func TestInjectPodSpecGolden(t *testing.T) {
	for _, tc := range []struct {
		golden, input string
		params        Params
	}{
		{"deployment-template", "deployment-template", DefaultParams(testImages)},
		{"deployment-template-classic", "deployment-template", classic(DefaultParams(testImages))},
		{"deployment-template-mesh", "deployment-template", ParamsFromMesh(customMesh(), testImages)},
		{"job", "job", DefaultParams(testImages)},
		{"job-classic", "job", classic(DefaultParams(testImages))},
		{"named-probes", "named-probes", DefaultParams(testImages)},
		{"overrides", "overrides", DefaultParams(testImages)},
		{"init-containers", "init-containers", DefaultParams(testImages)},
		{"init-containers-classic", "init-containers", classic(DefaultParams(testImages))},
		{"own-prometheus", "own-prometheus", DefaultParams(testImages)},
		{"deployment-template-node", "deployment-template", nodeProxy(DefaultParams(testImages))},
		{"job-node", "job", nodeProxy(DefaultParams(testImages))},
		{"overrides-node", "overrides", nodeProxy(DefaultParams(testImages))},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			pod := readPod(t, tc.input)
			changed, err := InjectPodSpec(&pod.ObjectMeta, &pod.Spec, tc.params)
			if err != nil || !changed {
				t.Fatalf("InjectPodSpec = %v, %v; want true, nil", changed, err)
			}
			once := marshal(t, pod)
			golden(t, tc.golden, once)

			// Injecting an injected pod changes nothing, whatever the parameters.
			for _, p := range []Params{tc.params, classic(tc.params), nodeProxy(tc.params), ParamsFromMesh(customMesh(), testImages)} {
				changed, err = InjectPodSpec(&pod.ObjectMeta, &pod.Spec, p)
				if err != nil || changed {
					t.Fatalf("second InjectPodSpec = %v, %v; want false, nil", changed, err)
				}
				if twice := marshal(t, pod); !bytes.Equal(once, twice) {
					t.Fatalf("injecting twice changed the pod:\n--- once\n%s\n--- twice\n%s", once, twice)
				}
			}
		})
	}
}

// TestInjectPodSpecUnchanged: pods that are not injected come back exactly as they went in.
func TestInjectPodSpecUnchanged(t *testing.T) {
	for _, tc := range []struct {
		input   string
		wantErr error
	}{
		{"already-injected", nil},
		{"host-network", ErrHostNetwork},
	} {
		t.Run(tc.input, func(t *testing.T) {
			pod := readPod(t, tc.input)
			before := pod.DeepCopy()
			changed, err := InjectPodSpec(&pod.ObjectMeta, &pod.Spec, DefaultParams(testImages))
			if changed || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("InjectPodSpec = %v, %v; want false, %v", changed, err, tc.wantErr)
			}
			if !equality.Semantic.DeepEqual(before, pod) {
				t.Fatalf("the pod changed:\n%s", marshal(t, pod))
			}
		})
	}
}

// TestInjectPodSpecErrors: bad overrides and clashes are refused with an error naming the culprit, and the pod is
// left unchanged.
func TestInjectPodSpecErrors(t *testing.T) {
	app := func(mutate func(*corev1.PodTemplateSpec)) *corev1.PodTemplateSpec {
		pod := &corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
		mutate(pod)
		return pod
	}
	annotated := func(kv ...string) *corev1.PodTemplateSpec {
		return app(func(p *corev1.PodTemplateSpec) {
			p.Annotations = map[string]string{}
			for i := 0; i < len(kv); i += 2 {
				p.Annotations[kv[i]] = kv[i+1]
			}
		})
	}
	for _, tc := range []struct {
		name   string
		pod    *corev1.PodTemplateSpec
		params Params
		want   string
	}{
		{"skip inbound not a port", annotated(wellknown.AnnotationSkipInboundPorts, "80,http"), DefaultParams(testImages),
			`annotation config.trellis.io/skip-inbound-ports: "80,http": want comma-separated ports and ranges such as 25,8000-8100: "http": "http" is not a port (1-65535)`},
		{"skip outbound out of range", annotated(wellknown.AnnotationSkipOutboundPorts, "70000"), DefaultParams(testImages),
			`annotation config.trellis.io/skip-outbound-ports: "70000"`},
		{"opaque reversed range", annotated(wellknown.AnnotationOpaquePorts, "9000-8000"), DefaultParams(testImages),
			`annotation config.trellis.io/opaque-ports: "9000-8000": want comma-separated ports and ranges such as 25,8000-8100: "9000-8000": the range ends before it starts`},
		{"log level", annotated(wellknown.AnnotationLogLevel, "verbose"), DefaultParams(testImages),
			`annotation config.trellis.io/log-level: "verbose": want debug, info, warn or error`},
		{"cpu request", annotated(wellknown.AnnotationProxyCPURequest, "lots"), DefaultParams(testImages),
			`annotation config.trellis.io/proxy-cpu-request: "lots": not a quantity such as 100m or 64Mi`},
		{"memory limit zero", annotated(wellknown.AnnotationProxyMemoryLimit, "0"), DefaultParams(testImages),
			`annotation config.trellis.io/proxy-memory-limit: "0": must be above 0`},
		{"limit below default request", annotated(wellknown.AnnotationProxyCPULimit, "5m"), DefaultParams(testImages),
			`the proxy's cpu request 10m is above its limit 5m: set config.trellis.io/proxy-cpu-request and config.trellis.io/proxy-cpu-limit`},
		{"app uses the admin port", app(func(p *corev1.PodTemplateSpec) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 4191}}
		}), DefaultParams(testImages), "container app declares port 4191, the proxy's admin port"},
		{"app uses a proxy port name", app(func(p *corev1.PodTemplateSpec) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "trellis-admin", ContainerPort: 8080}}
		}), DefaultParams(testImages), "container app declares a port named trellis-admin, a name the proxy uses"},
		{"app has a trellis volume", app(func(p *corev1.PodTemplateSpec) {
			p.Spec.Volumes = []corev1.Volume{{Name: "trellis-trust"}}
		}), DefaultParams(testImages), "the pod already has a volume named trellis-trust"},
		{"app has the podinfo volume", app(func(p *corev1.PodTemplateSpec) {
			p.Spec.Volumes = []corev1.Volume{{Name: "trellis-podinfo"}}
		}), DefaultParams(testImages), "the pod already has a volume named trellis-podinfo"},
		{"app has a trellis-init container", app(func(p *corev1.PodTemplateSpec) {
			p.Spec.InitContainers = []corev1.Container{{Name: "trellis-init"}}
		}), DefaultParams(testImages), "the pod already has a container named trellis-init"},
		{"app has a trellis-await container (DaemonSet mode)", app(func(p *corev1.PodTemplateSpec) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "trellis-await"})
		}), nodeProxy(DefaultParams(testImages)), "the pod already has a container named trellis-await"},
		{"no proxy image", annotated(), DefaultParams(Images{ProxyInit: "init"}), "injection parameters: no proxy image"},
		{"no init image", annotated(), DefaultParams(Images{Proxy: "proxy"}), "injection parameters: no proxy-init image"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.pod.DeepCopy()
			changed, err := InjectPodSpec(&tc.pod.ObjectMeta, &tc.pod.Spec, tc.params)
			if changed || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("InjectPodSpec = %v, %v; want an error containing %q", changed, err, tc.want)
			}
			if !equality.Semantic.DeepEqual(before, tc.pod) {
				t.Fatalf("the pod changed on error:\n%s", marshal(t, tc.pod))
			}
		})
	}
}

// TestOverridesDoNotLeak: an override applies to its pod only, never to the Params the next pod gets.
func TestOverridesDoNotLeak(t *testing.T) {
	p := ParamsFromMesh(customMesh(), testImages)
	before := p.Resources.DeepCopy()
	pod := readPod(t, "overrides")
	if _, err := InjectPodSpec(&pod.ObjectMeta, &pod.Spec, p); err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(before, &p.Resources) {
		t.Fatalf("the caller's resources changed: %v", p.Resources)
	}
}

// TestPathsMatchTheProxy: the files the injector mounts are where the proxy looks by default.
func TestPathsMatchTheProxy(t *testing.T) {
	if got := TokenDir + "/" + TokenFileName; got != workload.DefaultTokenFile {
		t.Errorf("token file %s, the proxy reads %s", got, workload.DefaultTokenFile)
	}
	if got := TrustDir + "/" + wellknown.TrustBundleKey; got != workload.DefaultTrustBundleFile {
		t.Errorf("trust bundle %s, the proxy reads %s", got, workload.DefaultTrustBundleFile)
	}
}

func TestParamsFromMesh(t *testing.T) {
	def := DefaultParams(testImages)
	want := Params{
		MeshName: "default", ProxyImage: testImages.Proxy, InitImage: testImages.ProxyInit,
		PullPolicy: corev1.PullIfNotPresent,
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("20Mi"),
		}},
		LogLevel: "info", OutboundPort: 4140, InboundPort: 4143, AdminPort: 4191,
		OpaquePorts:   PortsOf([]int32{25, 587, 3306, 4444, 5432, 6379, 9300, 11211}),
		NativeSidecar: true, TrustDomain: "cluster.local",
		IdentityAddr: "trellis-identity.trellis-system.svc:8080", IdentityServerName: "trellis-identity.trellis-system.svc",
		ProxyUID: 2102,
	}
	if !equality.Semantic.DeepEqual(def, want) {
		t.Errorf("DefaultParams:\n got %+v\nwant %+v", def, want)
	}

	custom := ParamsFromMesh(customMesh(), testImages)
	wantCustom := Params{
		MeshName: "prod", ProxyImage: "registry.example.com/trellis/proxy:v1.0.0", InitImage: testImages.ProxyInit,
		PullPolicy: corev1.PullAlways,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
		},
		LogLevel: "warn", OutboundPort: 15001, InboundPort: 15006, AdminPort: 15020,
		SkipInboundPorts: PortsOf([]int32{9100}), SkipOutboundPorts: PortsOf([]int32{443, 5432}),
		OpaquePorts: PortsOf([]int32{5432}), MeshOpaquePorts: PortsOf([]int32{5432}), IgnoredCIDRs: []string{"169.254.169.254/32", "fd00::/8"},
		NativeSidecar: true, TrustDomain: "prod.example.com",
		IdentityAddr: "trellis-identity.mesh-system.svc:8080", IdentityServerName: "trellis-identity.mesh-system.svc",
		ProxyUID: 2102,
	}
	if !equality.Semantic.DeepEqual(custom, wantCustom) {
		t.Errorf("ParamsFromMesh:\n got %+v\nwant %+v", custom, wantCustom)
	}

	off := customMesh()
	off.Spec.Proxy.NativeSidecar = ptr.To(false)
	off.Spec.Proxy.OpaquePorts = []int32{}
	if p := ParamsFromMesh(off, testImages); p.NativeSidecar || len(p.OpaquePorts) != 0 {
		t.Errorf("nativeSidecar false and opaquePorts [] gave NativeSidecar %v, OpaquePorts %v", p.NativeSidecar, p.OpaquePorts)
	}
	ds := customMesh()
	ds.Spec.Proxy.Mode = meshv1alpha1.ProxyModeDaemonSet
	if p := ParamsFromMesh(ds, testImages); !p.NodeProxy || custom.NodeProxy {
		t.Errorf("mode DaemonSet gave NodeProxy %v, Sidecar %v", p.NodeProxy, custom.NodeProxy)
	}
}

func TestPorts(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{"", "", ""},
		{" , ", "", ""},
		{"80", "80", ""},
		{"443, 80,80", "80,443", ""},
		{"8000-8100,8050,8101", "8000-8100,8101", ""},
		{"8000-8100,8090-8200", "8000-8200", ""},
		{"1-65535", "1-65535", ""},
		{"9000-9000", "9000", ""},
		{"0", "", `"0": "0" is not a port (1-65535)`},
		{"80-", "", `"80-": "" is not a port (1-65535)`},
		{"http", "", `"http": "http" is not a port (1-65535)`},
		{"90-80", "", `"90-80": the range ends before it starts`},
	} {
		got, err := ParsePorts(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParsePorts(%q) error = %v, want %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("ParsePorts(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	ps := PortsOf([]int32{8082, 25, 8080, 8081, 8080})
	if ps.String() != "25,8080,8081,8082" || !ps.Contains(8081) || ps.Contains(26) {
		t.Errorf("PortsOf = %s", ps)
	}
}

func TestShouldInject(t *testing.T) {
	ns := func(name string, labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	enabled := map[string]string{wellknown.LabelInject: wellknown.InjectEnabled}
	disabled := map[string]string{wellknown.LabelInject: wellknown.InjectDisabled}
	pod := func(labels, annotations map[string]string) *metav1.ObjectMeta {
		return &metav1.ObjectMeta{Labels: labels, Annotations: annotations}
	}
	for _, tc := range []struct {
		name   string
		ns     *corev1.Namespace
		pod    *metav1.ObjectMeta
		want   bool
		reason string
	}{
		{"enabled namespace", ns("shop", enabled), pod(nil, nil), true, "namespace shop is labelled trellis.io/inject=enabled"},
		{"unlabelled namespace", ns("shop", nil), pod(nil, nil), false, "neither the pod nor namespace shop is labelled trellis.io/inject=enabled"},
		{"disabled namespace", ns("shop", disabled), pod(nil, nil), false, "neither the pod nor namespace shop is labelled trellis.io/inject=enabled"},
		{"pod label opts out", ns("shop", enabled), pod(disabled, nil), false, "the pod opts out with trellis.io/inject=disabled"},
		{"pod annotation opts out", ns("shop", enabled), pod(nil, disabled), false, "the pod opts out with trellis.io/inject=disabled"},
		{"disabled wins over enabled on a pod", ns("shop", enabled), pod(enabled, disabled), false, "the pod opts out with trellis.io/inject=disabled"},
		{"pod label opts in", ns("shop", nil), pod(enabled, nil), true, "the pod opts in with trellis.io/inject=enabled"},
		{"pod annotation opts in", ns("shop", nil), pod(nil, enabled), true, "the pod opts in with trellis.io/inject=enabled"},
		{"pod opts in where the namespace opts out", ns("shop", disabled), pod(nil, enabled), true, "the pod opts in with trellis.io/inject=enabled"},
		{"kube-system", ns("kube-system", enabled), pod(enabled, nil), false, "namespace kube-system is a system namespace, which is never meshed"},
		{"kube-public", ns("kube-public", enabled), pod(nil, nil), false, "namespace kube-public is a system namespace, which is never meshed"},
		{"kube-node-lease", ns("kube-node-lease", enabled), pod(nil, nil), false, "namespace kube-node-lease is a system namespace, which is never meshed"},
		{"control plane", ns("trellis-system", enabled), pod(enabled, nil), false, "namespace trellis-system is the mesh's control-plane namespace, which is never meshed"},
		{"nil namespace, pod opts in", nil, pod(enabled, nil), true, "the pod opts in with trellis.io/inject=enabled"},
		{"nil pod meta", ns("shop", enabled), nil, true, "namespace shop is labelled trellis.io/inject=enabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := ShouldInject(tc.ns, tc.pod, "trellis-system")
			if got != tc.want || reason != tc.reason {
				t.Errorf("ShouldInject = %v, %q; want %v, %q", got, reason, tc.want, tc.reason)
			}
		})
	}
}

func TestOwningMesh(t *testing.T) {
	mesh := func(name string, created int64, selector *metav1.LabelSelector) meshv1alpha1.Mesh {
		return meshv1alpha1.Mesh{
			ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.Unix(created, 0)},
			Spec:       meshv1alpha1.MeshSpec{NamespaceSelector: selector, ControlPlaneNamespace: "trellis-system"},
		}
	}
	team := &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}
	deleting := mesh("deleting", 1, nil)
	deleting.DeletionTimestamp = ptr.To(metav1.Unix(5, 0))
	meshes := []meshv1alpha1.Mesh{mesh("young", 20, nil), mesh("old", 10, nil), mesh("team", 5, team), deleting}
	ns := func(name string, labels map[string]string) *corev1.Namespace {
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	enabled := map[string]string{wellknown.LabelInject: wellknown.InjectEnabled}
	terminating := ns("gone", enabled)
	terminating.Status.Phase = corev1.NamespaceTerminating
	for _, tc := range []struct {
		ns   *corev1.Namespace
		want string
	}{
		{ns("shop", enabled), "old"},
		{ns("shop", map[string]string{"team": "a"}), "team"},
		{ns("shop", nil), ""},
		{ns("kube-system", enabled), ""},
		{ns("trellis-system", enabled), ""},
		{terminating, ""},
	} {
		got := ""
		if m := OwningMesh(tc.ns, meshes); m != nil {
			got = m.Name
		}
		if got != tc.want {
			t.Errorf("OwningMesh(%s %v) = %q, want %q", tc.ns.Name, tc.ns.Labels, got, tc.want)
		}
	}
}

func TestCheckNamespace(t *testing.T) {
	for _, tc := range []struct {
		level string
		want  string
	}{
		{"", ""},
		{"privileged", ""},
		{"baseline", "namespace shop enforces the baseline Pod Security Standard (pod-security.kubernetes.io/enforce=baseline), which forbids the NET_ADMIN and NET_RAW capabilities trellis-init needs to redirect traffic"},
		{"restricted", "namespace shop enforces the restricted Pod Security Standard"},
	} {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{}}}
		if tc.level != "" {
			ns.Labels[LabelPodSecurityEnforce] = tc.level
		}
		err := CheckNamespace(ns)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)) {
			t.Errorf("CheckNamespace(%q) = %v, want %q", tc.level, err, tc.want)
		}
	}
	if err := CheckNamespace(nil); err != nil {
		t.Errorf("CheckNamespace(nil) = %v", err)
	}
}
