package inject

import (
	"net/url"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ProbePath is the request path of an HTTP probe on a container port.
type ProbePath struct {
	// Port is the container port, 1-65535.
	Port int32
	// Path is the path as the kubelet sends it: escaped, starting with "/", without the query.
	Path string
}

// ProbePaths is a set of probe paths, sorted by port and path. Its text form, used by the proxy's environment and the
// node proxy's pod annotation, is a comma-separated list of port:path pairs: "8080:/healthz,8080:/ready".
type ProbePaths []ProbePath

// String returns the text form, or "" for the empty set.
func (ps ProbePaths) String() string {
	items := make([]string, 0, len(ps))
	for _, p := range ps {
		items = append(items, strconv.Itoa(int(p.Port))+":"+p.Path)
	}
	return strings.Join(items, ",")
}

// Probes are what the proxy must let through for the kubelet's probes of a pod.
type Probes struct {
	// Paths are the paths of the HTTP probes: the proxy allows GET and HEAD requests for them on their port, and
	// nothing else on their account.
	Paths ProbePaths
	// Ports are the ports of the probes the proxy cannot tell apart from other traffic to the port (TCP, gRPC and
	// HTTPS probes): the proxy allows every client on them.
	Ports Ports
}

// probesOf returns the probes of the startup, readiness and liveness probes of every container, with named ports
// resolved against the probed container's ports. A name that resolves to nothing is left out: the kubelet cannot probe
// it either. So is an HTTP probe whose path holds a comma, which the text form cannot carry: its requests meet the
// port's policy. An HTTP probe of an opaque port counts by port: the proxy relays that port's traffic as bytes and
// never sees the path.
func probesOf(spec *corev1.PodSpec, opaque Ports) Probes {
	var ports []int32
	var paths ProbePaths
	containers := append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...)
	for i := range containers {
		c := &containers[i]
		for _, probe := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
			if probe == nil {
				continue
			}
			switch {
			case probe.HTTPGet != nil && probe.HTTPGet.Scheme == corev1.URISchemeHTTPS:
				// TLS of the application's own: the proxy relays it as bytes and never sees the path.
				ports = appendPort(ports, c, probe.HTTPGet.Port)
			case probe.HTTPGet != nil && probeOfOpaquePort(c, probe.HTTPGet.Port, opaque):
				ports = appendPort(ports, c, probe.HTTPGet.Port)
			case probe.HTTPGet != nil:
				port, ok := resolvePort(c, probe.HTTPGet.Port)
				path := probePath(probe.HTTPGet.Path)
				if ok && path != "" && !strings.Contains(path, ",") {
					paths = append(paths, ProbePath{Port: port, Path: path})
				}
			case probe.TCPSocket != nil:
				ports = appendPort(ports, c, probe.TCPSocket.Port)
			case probe.GRPC != nil:
				ports = append(ports, probe.GRPC.Port)
			}
		}
	}
	slices.SortFunc(paths, func(a, b ProbePath) int {
		if a.Port != b.Port {
			return int(a.Port - b.Port)
		}
		return strings.Compare(a.Path, b.Path)
	})
	return Probes{Paths: slices.Compact(paths), Ports: PortsOf(ports)}
}

// probePath returns the path of the request the kubelet sends for an HTTP probe's path: the kubelet makes the URL
// http://<pod IP>:<port> + path, formats it and parses it again, and requests its escaped path ("/" when empty) with
// the query. It returns "" for a path the kubelet cannot request.
func probePath(path string) string {
	u, err := url.Parse(path)
	if err != nil {
		u = &url.URL{Path: path}
	}
	u.Scheme, u.Host = "http", "pod.invalid:80"
	if u, err = url.Parse(u.String()); err != nil {
		return ""
	}
	p, _, _ := strings.Cut(u.RequestURI(), "?")
	return p
}

func probeOfOpaquePort(c *corev1.Container, port intstr.IntOrString, opaque Ports) bool {
	p, ok := resolvePort(c, port)
	return ok && opaque.Contains(p)
}

func resolvePort(c *corev1.Container, port intstr.IntOrString) (int32, bool) {
	if port.Type == intstr.Int {
		return port.IntVal, true
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func appendPort(ports []int32, c *corev1.Container, port intstr.IntOrString) []int32 {
	if p, ok := resolvePort(c, port); ok {
		return append(ports, p)
	}
	return ports
}
