package inject

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestProbesOf checks what the proxy is told of the kubelet's probes: HTTP probes by port and path as the kubelet
// requests them, the other kinds by port.
func TestProbesOf(t *testing.T) {
	httpGet := func(port intstr.IntOrString, path string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: port, Path: path}}}
	}
	named := intstr.FromString
	num := func(p int) intstr.IntOrString { return intstr.FromInt32(int32(p)) }
	for _, tc := range []struct {
		name         string
		c            corev1.Container
		paths, ports string
	}{
		{"HTTP probes by path, query left out", corev1.Container{
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			StartupProbe:   httpGet(named("http"), "/ready?full=1"),
			ReadinessProbe: httpGet(named("http"), "/ready"),
			LivenessProbe:  httpGet(num(8080), "/healthz"),
		}, "8080:/healthz,8080:/ready", ""},
		{"paths as the kubelet sends them", corev1.Container{
			StartupProbe:   httpGet(num(8080), ""),
			ReadinessProbe: httpGet(num(8081), "healthz"),
			LivenessProbe:  httpGet(num(8082), "/with space#fragment"),
		}, "8080:/,8081:/healthz,8082:/with%20space", ""},
		{"a path with a comma is left out", corev1.Container{
			ReadinessProbe: httpGet(num(8080), "/a,b"),
		}, "", ""},
		{"HTTPS, TCP and gRPC probes by port", corev1.Container{
			Ports: []corev1.ContainerPort{{Name: "tls", ContainerPort: 8443}},
			StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Port: named("tls"), Path: "/healthz", Scheme: corev1.URISchemeHTTPS}}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: num(5432)}}},
			LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090}}},
		}, "", "5432,8443,9090"},
		{"an HTTP probe of an opaque port by port", corev1.Container{
			Ports:          []corev1.ContainerPort{{Name: "db", ContainerPort: 5432}},
			ReadinessProbe: httpGet(named("db"), "/healthz"),
			LivenessProbe:  httpGet(num(8080), "/healthz"),
		}, "8080:/healthz", "5432"},
		{"a name that resolves to nothing is left out", corev1.Container{
			ReadinessProbe: httpGet(named("nope"), "/healthz"),
			LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: named("nope")}}},
		}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.c.Name = "app"
			got := probesOf(&corev1.PodSpec{Containers: []corev1.Container{tc.c}}, PortsOf(DefaultOpaquePorts))
			if got.Paths.String() != tc.paths || got.Ports.String() != tc.ports {
				t.Errorf("paths %q, ports %q; want %q, %q", got.Paths, got.Ports, tc.paths, tc.ports)
			}
		})
	}
}

// TestProbeOfMeshOpaquePort checks that a port the Mesh lists as opaque counts by port even when the pod's annotation
// leaves it out: the rendered configuration still makes the proxy relay it as bytes.
func TestProbeOfMeshOpaquePort(t *testing.T) {
	p := DefaultParams(Images{Proxy: "p", ProxyInit: "i"})
	p.MeshOpaquePorts = PortsOf([]int32{7000})
	p.OpaquePorts = PortsOf([]int32{25}) // config.trellis.io/opaque-ports: "25"
	spec := &corev1.PodSpec{Containers: []corev1.Container{{Name: "app",
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(7000), Path: "/healthz"}}},
		LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(8080), Path: "/healthz"}}},
	}}}
	meta := &metav1.ObjectMeta{Name: "web"}
	if _, err := InjectPodSpec(meta, spec, p); err != nil {
		t.Fatal(err)
	}
	var proxy *corev1.Container
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == ProxyContainerName {
			proxy = &spec.InitContainers[i]
		}
	}
	if proxy == nil {
		t.Fatal("no proxy container")
	}
	env := map[string]string{}
	for _, e := range proxy.Env {
		env[e.Name] = e.Value
	}
	if env[EnvInboundProbePorts] != "7000" || env[EnvInboundProbePaths] != "8080:/healthz" {
		t.Errorf("probe ports %q, paths %q; want 7000 and 8080:/healthz", env[EnvInboundProbePorts], env[EnvInboundProbePaths])
	}
}
