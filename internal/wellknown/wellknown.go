// Package wellknown holds the names every part of Trellis agrees on: labels, annotations, ConfigMap names and keys,
// ports and paths. Changing a value here changes a contract between the manager, the injector, the proxy and the
// CLI.
package wellknown

// Labels and annotations users set.
const (
	// LabelInject opts a namespace or pod in ("enabled") or out ("disabled") of proxy injection.
	LabelInject = "trellis.io/inject"
	// InjectEnabled is the value of LabelInject that opts in.
	InjectEnabled = "enabled"
	// InjectDisabled is the value of LabelInject that opts out.
	InjectDisabled = "disabled"
	// ConfigAnnotationPrefix starts the pod annotations that override proxy settings, e.g.
	// config.trellis.io/skip-inbound-ports.
	ConfigAnnotationPrefix = "config.trellis.io/"
	// AnnotationOpaquePorts lists ports (comma-separated) proxied as opaque TCP, on a pod or a Service.
	AnnotationOpaquePorts = ConfigAnnotationPrefix + "opaque-ports"
	// AnnotationSkipInboundPorts lists ports whose inbound traffic bypasses the proxy.
	AnnotationSkipInboundPorts = ConfigAnnotationPrefix + "skip-inbound-ports"
	// AnnotationSkipOutboundPorts lists ports whose outbound traffic bypasses the proxy.
	AnnotationSkipOutboundPorts = ConfigAnnotationPrefix + "skip-outbound-ports"
	// AnnotationLogLevel sets the proxy's log level.
	AnnotationLogLevel = ConfigAnnotationPrefix + "log-level"
	// AnnotationProxyCPURequest, AnnotationProxyMemoryRequest, AnnotationProxyCPULimit and
	// AnnotationProxyMemoryLimit set the proxy container's resources.
	AnnotationProxyCPURequest    = ConfigAnnotationPrefix + "proxy-cpu-request"
	AnnotationProxyMemoryRequest = ConfigAnnotationPrefix + "proxy-memory-request"
	AnnotationProxyCPULimit      = ConfigAnnotationPrefix + "proxy-cpu-limit"
	AnnotationProxyMemoryLimit   = ConfigAnnotationPrefix + "proxy-memory-limit"
)

// Labels and annotations Trellis sets.
const (
	// AnnotationInjected marks a pod the injector changed; its value is the mesh's name.
	AnnotationInjected = "mesh.trellis.io/injected"
	// LabelProxy marks pods that run a Trellis proxy ("sidecar") or are served by the node proxy ("node").
	LabelProxy = "mesh.trellis.io/proxy"
	// ProxySidecar is LabelProxy's value on pods with an injected proxy.
	ProxySidecar = "sidecar"
	// ProxyNode is LabelProxy's value on pods the node proxy serves (Mesh spec.proxy.mode DaemonSet).
	ProxyNode = "node"
	// AnnotationInboundProbePaths lists (as "port:path" pairs, "8080:/healthz,8080:/ready") the paths of the
	// kubelet's HTTP probes, on pods the node proxy serves: GET and HEAD requests for them are always authorized.
	AnnotationInboundProbePaths = "mesh.trellis.io/inbound-probe-paths"
	// AnnotationInboundProbePorts lists (in the Ports text form, "8080,9000-9010") the container ports of the
	// kubelet's TCP, gRPC and HTTPS probes, on pods the node proxy serves: inbound traffic to them is always
	// authorized.
	AnnotationInboundProbePorts = "mesh.trellis.io/inbound-probe-ports"
	// AnnotationProxyOpaquePorts lists the pod's opaque ports as the injector resolved them, on pods the node proxy
	// serves (sidecars get them in TRELLIS_PROXY_OPAQUE_PORTS).
	AnnotationProxyOpaquePorts = "mesh.trellis.io/opaque-ports"
)

// Names of the objects the manager writes into every meshed namespace.
const (
	// ProxyConfigName is the ConfigMap holding the proxy configuration; larger configurations continue in
	// ProxyConfigName-1, ProxyConfigName-2, ... up to MaxProxyConfigMaps.
	ProxyConfigName = "trellis-proxy-config"
	// MaxProxyConfigMaps is how many ConfigMaps a configuration may span.
	MaxProxyConfigMaps = 8
	// ProxyConfigReaderName is the Role and RoleBinding that let a namespace's proxies read their configuration
	// ConfigMaps through the API.
	ProxyConfigReaderName = "trellis-proxy-config-reader"
	// TrustBundleName is the ConfigMap holding the PEM trust roots.
	TrustBundleName = "trellis-trust-bundle"
	// TrustBundleKey is the trust bundle's key.
	TrustBundleKey = "ca-bundle.crt"
)

// Proxy ports and paths.
const (
	// OutboundPort receives the application's outbound traffic.
	OutboundPort = 4140
	// InboundPort receives traffic addressed to the application.
	InboundPort = 4143
	// AdminPort serves /metrics, /ready, /live, /config and /shutdown.
	AdminPort = 4191
	// IdentityPort is where the identity service listens.
	IdentityPort = 8080
	// IdentityServiceName is the Service in the control-plane namespace in front of the identity service; its
	// serving certificate carries <IdentityServiceName>.<namespace>.svc.
	IdentityServiceName = "trellis-identity"
	// IdentityAudience is the audience of the ServiceAccount tokens proxies present to the identity service.
	IdentityAudience = "identity.trellis.io"
	// ProxyUID is the user the proxy runs as; proxy-init exempts its traffic from redirection.
	ProxyUID = 2102
)
