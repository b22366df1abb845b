package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// Defaults of Params, the same as the Mesh API's.
const (
	// DefaultMeshName is the mesh name offline tools use when none is given.
	DefaultMeshName = "default"
	// DefaultControlPlaneNamespace is where the identity service runs unless the Mesh says otherwise.
	DefaultControlPlaneNamespace = "trellis-system"
	// DefaultTrustDomain is the SPIFFE trust domain unless the Mesh says otherwise.
	DefaultTrustDomain = "cluster.local"
	// DefaultLogLevel is the proxy's log level.
	DefaultLogLevel = "info"
	// DefaultPullPolicy is the pull policy of the proxy and proxy-init containers.
	DefaultPullPolicy = corev1.PullIfNotPresent
	// DefaultCPURequest and DefaultMemoryRequest are the proxy container's requests; it has no limits by default.
	DefaultCPURequest    = "10m"
	DefaultMemoryRequest = "20Mi"
)

// DefaultOpaquePorts are the ports proxied as opaque TCP unless the Mesh or the pod says otherwise: server-speaks-
// first protocols (SMTP, MySQL, Galera, PostgreSQL, Redis, Elasticsearch transport, memcached).
var DefaultOpaquePorts = []int32{25, 587, 3306, 4444, 5432, 6379, 9300, 11211}

// Images are the container images the injector uses unless a Mesh names its own proxy image. The manager gets
// them from its flags, the CLI from its own.
type Images struct {
	// Proxy is the proxy image reference. Required; Mesh.spec.proxy.image overrides it.
	Proxy string
	// ProxyInit is the proxy-init image reference (the init container that installs the traffic redirect).
	// Required.
	ProxyInit string
}

// Params is everything InjectPodSpec needs. Start from DefaultParams or ParamsFromMesh: zero numbers and strings
// there mean the documented default, but NativeSidecar's zero value (false) is the classic layout.
type Params struct {
	// MeshName is the Mesh the pod joins, written to the mesh.trellis.io/injected annotation. Required.
	MeshName string
	// ProxyImage is the proxy container's image. Required.
	ProxyImage string
	// InitImage is the trellis-init container's image. Required.
	InitImage string
	// PullPolicy of both images. Default: IfNotPresent.
	PullPolicy corev1.PullPolicy
	// Resources of the proxy container. Default: requests of 10m CPU and 20Mi memory, no limits. Pod annotations
	// config.trellis.io/proxy-{cpu,memory}-{request,limit} override single values.
	Resources corev1.ResourceRequirements
	// LogLevel of the proxy: debug, info, warn or error. Default: info; config.trellis.io/log-level overrides it.
	LogLevel string
	// OutboundPort receives the application's outbound traffic. Default: 4140.
	OutboundPort int32
	// InboundPort receives traffic addressed to the application. Default: 4143.
	InboundPort int32
	// AdminPort serves /metrics, /ready, /live, /config and /shutdown, and the proxy's probes. Default: 4191.
	AdminPort int32
	// SkipInboundPorts bypass the proxy for inbound traffic. Default: none;
	// config.trellis.io/skip-inbound-ports replaces them.
	SkipInboundPorts Ports
	// SkipOutboundPorts bypass the proxy for outbound traffic. Default: none;
	// config.trellis.io/skip-outbound-ports replaces them.
	SkipOutboundPorts Ports
	// OpaquePorts are proxied as opaque TCP, without protocol detection. Default: DefaultOpaquePorts;
	// config.trellis.io/opaque-ports replaces them.
	OpaquePorts Ports
	// MeshOpaquePorts are the Mesh's spec.proxy.opaquePorts, which the rendered configuration gives every proxy
	// whatever a pod's annotation says; an HTTP probe of one of them, like one of OpaquePorts, is allowed by port.
	// Default: none.
	MeshOpaquePorts Ports
	// IgnoredCIDRs are destination networks whose outbound traffic bypasses the proxy. Default: none.
	IgnoredCIDRs []string
	// NativeSidecar runs the proxy as an init container with restartPolicy Always (Kubernetes 1.29 and later);
	// false makes it the first regular container. Default (DefaultParams, ParamsFromMesh): true.
	NativeSidecar bool
	// TrustDomain is the SPIFFE trust domain of the workload's identity. Default: cluster.local.
	TrustDomain string
	// IdentityAddr is the identity service's host:port. Default: trellis-identity.trellis-system.svc:8080.
	IdentityAddr string
	// IdentityServerName is the name in the identity service's serving certificate. Default:
	// trellis-identity.trellis-system.svc.
	IdentityServerName string
	// ProxyUID is the user the proxy runs as; proxy-init exempts its traffic from redirection. Default:
	// wellknown.ProxyUID (2102).
	ProxyUID int64
	// NodeProxy injects for the node proxy (Mesh spec.proxy.mode DaemonSet): the pod gets trellis-init and
	// trellis-await, which holds its other containers until the node proxy serves it, and no proxy container.
	// Default false: a proxy in the pod.
	NodeProxy bool
}

// DefaultParams returns the parameters of a default Mesh named DefaultMeshName with the given images.
func DefaultParams(images Images) Params {
	return ParamsFromMesh(&meshv1alpha1.Mesh{}, images)
}

// ParamsFromMesh fills Params from a Mesh and the images the caller was started with. Fields the Mesh leaves at
// their zero value take the API's documented defaults, so a Mesh read before defaulting gives the same result.
func ParamsFromMesh(mesh *meshv1alpha1.Mesh, images Images) Params {
	proxy := mesh.Spec.Proxy
	cp := orDefault(mesh.Spec.ControlPlaneNamespace, DefaultControlPlaneNamespace)
	p := Params{
		MeshName:           orDefault(mesh.Name, DefaultMeshName),
		ProxyImage:         orDefault(proxy.Image, images.Proxy),
		InitImage:          images.ProxyInit,
		PullPolicy:         proxy.ImagePullPolicy,
		LogLevel:           string(proxy.LogLevel),
		OutboundPort:       proxy.Ports.Outbound,
		InboundPort:        proxy.Ports.Inbound,
		AdminPort:          proxy.Ports.Admin,
		SkipInboundPorts:   PortsOf(proxy.SkipInboundPorts),
		SkipOutboundPorts:  PortsOf(proxy.SkipOutboundPorts),
		OpaquePorts:        PortsOf(proxy.OpaquePorts),
		MeshOpaquePorts:    PortsOf(proxy.OpaquePorts),
		IgnoredCIDRs:       append([]string(nil), proxy.IgnoredCIDRs...),
		NativeSidecar:      proxy.NativeSidecar == nil || *proxy.NativeSidecar,
		TrustDomain:        mesh.Spec.TrustDomain,
		IdentityAddr:       fmt.Sprintf("%s.%s.svc:%d", wellknown.IdentityServiceName, cp, wellknown.IdentityPort),
		IdentityServerName: fmt.Sprintf("%s.%s.svc", wellknown.IdentityServiceName, cp),
		NodeProxy:          proxy.Mode == meshv1alpha1.ProxyModeDaemonSet,
	}
	if proxy.OpaquePorts == nil {
		p.OpaquePorts = PortsOf(DefaultOpaquePorts)
	}
	if proxy.Resources != nil {
		p.Resources = *proxy.Resources.DeepCopy()
	}
	return p.withDefaults()
}

// withDefaults returns p with every zero field that has a default set to it.
func (p Params) withDefaults() Params {
	p.PullPolicy = corev1.PullPolicy(orDefault(string(p.PullPolicy), string(DefaultPullPolicy)))
	p.LogLevel = orDefault(p.LogLevel, DefaultLogLevel)
	p.OutboundPort = orDefaultPort(p.OutboundPort, wellknown.OutboundPort)
	p.InboundPort = orDefaultPort(p.InboundPort, wellknown.InboundPort)
	p.AdminPort = orDefaultPort(p.AdminPort, wellknown.AdminPort)
	p.TrustDomain = orDefault(p.TrustDomain, DefaultTrustDomain)
	p.IdentityAddr = orDefault(p.IdentityAddr,
		fmt.Sprintf("%s.%s.svc:%d", wellknown.IdentityServiceName, DefaultControlPlaneNamespace, wellknown.IdentityPort))
	p.IdentityServerName = orDefault(p.IdentityServerName,
		fmt.Sprintf("%s.%s.svc", wellknown.IdentityServiceName, DefaultControlPlaneNamespace))
	if p.ProxyUID == 0 {
		p.ProxyUID = wellknown.ProxyUID
	}
	if p.Resources.Requests == nil && p.Resources.Limits == nil && p.Resources.Claims == nil {
		p.Resources.Requests = corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse(DefaultCPURequest),
			corev1.ResourceMemory: resource.MustParse(DefaultMemoryRequest),
		}
	}
	return p
}

// validate reports parameters no pod could run with.
func (p Params) validate() error {
	switch {
	case p.MeshName == "":
		return fmt.Errorf("no mesh name")
	case p.ProxyImage == "":
		return fmt.Errorf("no proxy image: set Mesh spec.proxy.image or the manager's proxy image")
	case p.InitImage == "":
		return fmt.Errorf("no proxy-init image")
	}
	ports := []struct {
		name string
		port int32
	}{{"outbound", p.OutboundPort}, {"inbound", p.InboundPort}, {"admin", p.AdminPort}}
	for i, a := range ports {
		if a.port < 1 || a.port > 65535 {
			return fmt.Errorf("proxy %s port %d is not a port (1-65535)", a.name, a.port)
		}
		for _, b := range ports[i+1:] {
			if a.port == b.port {
				return fmt.Errorf("proxy %s and %s ports are both %d", a.name, b.name, a.port)
			}
		}
	}
	if p.ProxyUID <= 0 {
		return fmt.Errorf("proxy UID %d: it must be above 0", p.ProxyUID)
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func orDefaultPort(p, def int32) int32 {
	if p == 0 {
		return def
	}
	return p
}
