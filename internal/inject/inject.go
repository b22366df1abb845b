// Package inject adds the Trellis proxy to pods: InjectPodSpec is the pure mutation shared by the admission webhook
// (Webhook, for Pods) and the CLI (`trellis inject`, for pod templates), ShouldInject is the opt-in decision, and
// ParamsFromMesh turns a Mesh into the parameters of the mutation. docs/injection.md describes the result.
//
// Wiring the webhook into a manager:
//
//	wh := inject.NewWebhook(mgr.GetClient(), inject.ClientMeshLookup{Reader: mgr.GetClient()}, images, mgr.GetScheme())
//	mgr.GetWebhookServer().Register(inject.WebhookPath, &webhook.Admission{Handler: wh})
package inject

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// Names and paths of what InjectPodSpec adds to a pod.
const (
	// InitContainerName is the init container that installs the traffic redirect.
	InitContainerName = "trellis-init"
	// AwaitContainerName is the init container that, in DaemonSet mode, waits until the node proxy serves the pod.
	AwaitContainerName = "trellis-await"
	// ProxyContainerName is the proxy's container: a native sidecar or the first regular container.
	ProxyContainerName = "trellis-proxy"
	// InitCommand is proxy-init's path in its image.
	InitCommand = "/proxy-init"
	// ProxyCommand is the proxy's path in its image.
	ProxyCommand = "/proxy"

	// AdminPortName, InboundPortName and OutboundPortName name the proxy's container ports. Port names are at most
	// 15 characters, hence "trellis-out".
	AdminPortName    = "trellis-admin"
	InboundPortName  = "trellis-inbound"
	OutboundPortName = "trellis-out"

	// ConfigVolumeName is the projected volume of the proxy configuration ConfigMaps, mounted at ConfigDir.
	ConfigVolumeName = "trellis-config"
	// ConfigDir is where the proxy reads its configuration.
	ConfigDir = "/var/run/trellis/config"
	// TrustVolumeName is the trust bundle ConfigMap's volume, mounted at TrustDir.
	TrustVolumeName = "trellis-trust"
	// TrustDir holds the trust bundle, wellknown.TrustBundleKey.
	TrustDir = "/var/run/trellis/trust"
	// TokenVolumeName is the projected ServiceAccount token the proxy presents to the identity service, mounted
	// at TokenDir.
	TokenVolumeName = "trellis-identity-token"
	// TokenDir holds the token file TokenFileName.
	TokenDir = "/var/run/secrets/tokens"
	// TokenFileName is the token's file name in TokenDir.
	TokenFileName = "trellis-identity-token"
	// TokenExpirationSeconds is the token's requested lifetime; the kubelet renews it at 80% of it.
	TokenExpirationSeconds = 86400
	// PodInfoVolumeName is the downward API volume of the pod's labels, mounted at PodInfoDir: the proxy matches
	// them against the workload selectors of its configuration, and the kubelet updates the file when they change.
	PodInfoVolumeName = "trellis-podinfo"
	// PodInfoDir holds the labels file PodLabelsFileName.
	PodInfoDir = "/var/run/trellis/podinfo"
	// PodLabelsFileName is the labels file's name in PodInfoDir (key="value" lines).
	PodLabelsFileName = "labels"
)

// Environment variables of the proxy container. Each sets the proxy flag of the same name (TRELLIS_PROXY_<FLAG>).
const (
	EnvLogLevel           = "TRELLIS_PROXY_LOG_LEVEL"            // debug, info, warn or error
	EnvOutboundAddr       = "TRELLIS_PROXY_OUTBOUND_ADDR"        // ":<outbound port>"
	EnvInboundAddr        = "TRELLIS_PROXY_INBOUND_ADDR"         // ":<inbound port>"
	EnvAdminAddr          = "TRELLIS_PROXY_ADMIN_ADDR"           // ":<admin port>"
	EnvConfigDir          = "TRELLIS_PROXY_CONFIG_DIR"           // ConfigDir
	EnvIdentityAddr       = "TRELLIS_PROXY_IDENTITY_ADDR"        // the identity service's host:port
	EnvIdentityServerName = "TRELLIS_PROXY_IDENTITY_SERVER_NAME" // the name in its serving certificate
	EnvTrustDomain        = "TRELLIS_PROXY_TRUST_DOMAIN"         // the SPIFFE trust domain
	EnvTokenFile          = "TRELLIS_PROXY_TOKEN_FILE"           // the projected ServiceAccount token
	EnvTrustBundleFile    = "TRELLIS_PROXY_TRUST_BUNDLE_FILE"    // the PEM trust bundle
	EnvPodNamespace       = "TRELLIS_PROXY_POD_NAMESPACE"        // downward API metadata.namespace
	EnvPodName            = "TRELLIS_PROXY_POD_NAME"             // downward API metadata.name
	EnvServiceAccount     = "TRELLIS_PROXY_SERVICE_ACCOUNT"      // downward API spec.serviceAccountName
	EnvPodIP              = "TRELLIS_PROXY_POD_IP"               // downward API status.podIP
	EnvPodLabelsFile      = "TRELLIS_PROXY_POD_LABELS_FILE"      // PodInfoDir/PodLabelsFileName
	// EnvOpaquePorts holds the pod's opaque ports in the Ports text form ("25,7000-7010"); empty means none.
	EnvOpaquePorts = "TRELLIS_PROXY_OPAQUE_PORTS"
	// EnvInboundProbePaths holds the paths of the kubelet's HTTP probes, in the ProbePaths text form
	// ("8080:/healthz,8080:/ready"); empty means none.
	EnvInboundProbePaths = "TRELLIS_PROXY_INBOUND_PROBE_PATHS"
	// EnvInboundProbePorts holds the container ports of the kubelet's TCP, gRPC and HTTPS probes, in the Ports text
	// form; empty means none.
	EnvInboundProbePorts = "TRELLIS_PROXY_INBOUND_PROBE_PORTS"
)

// Prometheus annotations InjectPodSpec adds when the pod has no prometheus.io/* annotation of its own (a pod that
// uses them for its application keeps them, and its proxy is scraped through the trellis-admin port instead).
const (
	AnnotationPrometheusScrape = "prometheus.io/scrape" // "true"
	AnnotationPrometheusPort   = "prometheus.io/port"   // the admin port
	AnnotationPrometheusPath   = "prometheus.io/path"   // "/metrics"
	prometheusPrefix           = "prometheus.io/"
)

// AnnotationDefaultContainer tells kubectl which container logs and exec address by default. Classic injection
// sets it to the first application container, because the proxy becomes the pod's first container.
const AnnotationDefaultContainer = "kubectl.kubernetes.io/default-container"

// ErrHostNetwork is returned for pods on the host network: their redirect rules would capture the node's traffic,
// so they are never injected.
var ErrHostNetwork = errors.New("the pod uses the host network, and a proxy there would capture the node's traffic")

// IsInjected reports whether a pod already has a proxy: it carries the mesh.trellis.io/injected annotation or a
// container named trellis-proxy.
func IsInjected(meta *metav1.ObjectMeta, spec *corev1.PodSpec) bool {
	if meta != nil {
		if _, ok := meta.Annotations[wellknown.AnnotationInjected]; ok {
			return true
		}
	}
	return hasContainer(spec.InitContainers, ProxyContainerName) || hasContainer(spec.Containers, ProxyContainerName)
}

// InjectPodSpec adds the proxy to a pod or pod template in place and reports whether it changed anything. A pod
// that IsInjected is left alone (changed false, no error), which makes injection idempotent. The pod's
// config.trellis.io/* annotations override p. It returns ErrHostNetwork for host-network pods, and an error naming
// the annotation and value for a bad override, or the clash for a pod that already uses the proxy's names or
// ports; in every error case the pod is unchanged.
//
//nolint:revive // inject.InjectPodSpec is the name the webhook, the CLI and the docs share.
func InjectPodSpec(meta *metav1.ObjectMeta, spec *corev1.PodSpec, p Params) (changed bool, err error) {
	if IsInjected(meta, spec) {
		return false, nil
	}
	if spec.HostNetwork {
		return false, ErrHostNetwork
	}
	p = p.withDefaults()
	if err := p.validate(); err != nil {
		return false, fmt.Errorf("injection parameters: %w", err)
	}
	if p, err = applyOverrides(meta.Annotations, p); err != nil {
		return false, err
	}
	if err := checkClashes(spec, p); err != nil {
		return false, err
	}
	if p.NodeProxy {
		annotateNodeProxy(meta, p, probesOf(spec, p.OpaquePorts.Union(p.MeshOpaquePorts)))
		spec.InitContainers = append([]corev1.Container{initContainer(p), awaitContainer(p)}, spec.InitContainers...)
		return true, nil
	}
	firstApp := ""
	if len(spec.Containers) > 0 {
		firstApp = spec.Containers[0].Name
	}
	proxy := proxyContainer(p, probesOf(spec, p.OpaquePorts.Union(p.MeshOpaquePorts)))
	if p.NativeSidecar {
		proxy.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
		spec.InitContainers = append([]corev1.Container{initContainer(p), proxy}, spec.InitContainers...)
	} else {
		// The kubelet starts a pod's containers in order and the next one only after the previous one's postStart
		// hook returns: the application starts once the proxy is ready, as it does after a native sidecar's
		// startup probe. A hook that fails restarts the proxy container.
		proxy.Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
			Command: []string{ProxyCommand, "--mode=await", "--await-timeout=" + AwaitTimeout}}}}
		spec.InitContainers = append([]corev1.Container{initContainer(p)}, spec.InitContainers...)
		spec.Containers = append([]corev1.Container{proxy}, spec.Containers...)
	}
	spec.Volumes = append(spec.Volumes, volumes()...)
	annotate(meta, p, firstApp)
	return true, nil
}

// annotate marks the pod as injected and, unless the pod declares its own, adds Prometheus scrape annotations.
func annotate(meta *metav1.ObjectMeta, p Params, firstApp string) {
	if meta.Annotations == nil {
		meta.Annotations = map[string]string{}
	}
	if meta.Labels == nil {
		meta.Labels = map[string]string{}
	}
	meta.Annotations[wellknown.AnnotationInjected] = p.MeshName
	meta.Labels[wellknown.LabelProxy] = wellknown.ProxySidecar
	ownPrometheus := false
	for k := range meta.Annotations {
		if strings.HasPrefix(k, prometheusPrefix) {
			ownPrometheus = true
		}
	}
	if !ownPrometheus {
		meta.Annotations[AnnotationPrometheusScrape] = "true"
		meta.Annotations[AnnotationPrometheusPort] = strconv.Itoa(int(p.AdminPort))
		meta.Annotations[AnnotationPrometheusPath] = "/metrics"
	}
	if _, ok := meta.Annotations[AnnotationDefaultContainer]; !ok && !p.NativeSidecar && firstApp != "" {
		meta.Annotations[AnnotationDefaultContainer] = firstApp
	}
}

// annotateNodeProxy marks a pod the node proxy serves, and tells the node proxy what a sidecar gets in its
// environment: the kubelet's probes and the pod's opaque ports.
func annotateNodeProxy(meta *metav1.ObjectMeta, p Params, probes Probes) {
	if meta.Annotations == nil {
		meta.Annotations = map[string]string{}
	}
	if meta.Labels == nil {
		meta.Labels = map[string]string{}
	}
	meta.Annotations[wellknown.AnnotationInjected] = p.MeshName
	meta.Annotations[wellknown.AnnotationInboundProbePaths] = probes.Paths.String()
	meta.Annotations[wellknown.AnnotationInboundProbePorts] = probes.Ports.String()
	meta.Annotations[wellknown.AnnotationProxyOpaquePorts] = p.OpaquePorts.String()
	meta.Labels[wellknown.LabelProxy] = wellknown.ProxyNode
}

// awaitContainer is trellis-await (DaemonSet mode): proxy-init waiting until the node proxy accepts on the proxy
// ports in the pod's network namespace, so that the pod's other init containers and its containers start only once
// their traffic is carried. It needs no privilege.
func awaitContainer(p Params) corev1.Container {
	return corev1.Container{
		Name:            AwaitContainerName,
		Image:           p.InitImage,
		ImagePullPolicy: p.PullPolicy,
		Command:         []string{InitCommand},
		Args: []string{
			"--await-node-proxy",
			fmt.Sprintf("--outbound-port=%d", p.OutboundPort),
			fmt.Sprintf("--inbound-port=%d", p.InboundPort),
			"--await-timeout=" + AwaitTimeout,
		},
		Resources:                *p.Resources.DeepCopy(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			RunAsUser:                ptr.To[int64](AwaitUID),
			RunAsNonRoot:             ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

// AwaitTimeout is how long trellis-await waits for the node proxy, and the classic sidecar's postStart hook for the
// proxy, before it fails (and the kubelet restarts it, or fails the pod of a Job that does not restart): as long as a
// native sidecar's startup probe allows.
const AwaitTimeout = "2m"

// AwaitUID is the unprivileged user trellis-await runs as.
const AwaitUID = 65532

// initContainer is trellis-init: it installs the redirect with the capabilities that needs, and nothing more.
func initContainer(p Params) corev1.Container {
	return corev1.Container{
		Name:            InitContainerName,
		Image:           p.InitImage,
		ImagePullPolicy: p.PullPolicy,
		Command:         []string{InitCommand},
		Args: []string{
			fmt.Sprintf("--outbound-port=%d", p.OutboundPort),
			fmt.Sprintf("--inbound-port=%d", p.InboundPort),
			fmt.Sprintf("--admin-port=%d", p.AdminPort),
			fmt.Sprintf("--proxy-uid=%d", p.ProxyUID),
			"--skip-inbound-ports=" + p.SkipInboundPorts.String(),
			"--skip-outbound-ports=" + p.SkipOutboundPorts.String(),
			"--ignored-cidrs=" + strings.Join(p.IgnoredCIDRs, ","),
		},
		Resources:                *p.Resources.DeepCopy(),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
			RunAsUser:                ptr.To[int64](0),
			RunAsNonRoot:             ptr.To(false),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
		},
	}
}

// proxyContainer is trellis-proxy, configured through its environment.
func proxyContainer(p Params, probes Probes) corev1.Container {
	adminProbe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(p.AdminPort), Scheme: corev1.URISchemeHTTP,
			}},
			TimeoutSeconds: 1, PeriodSeconds: period, SuccessThreshold: 1, FailureThreshold: failures,
		}
	}
	return corev1.Container{
		Name:            ProxyContainerName,
		Image:           p.ProxyImage,
		ImagePullPolicy: p.PullPolicy,
		Ports: []corev1.ContainerPort{
			{Name: AdminPortName, ContainerPort: p.AdminPort, Protocol: corev1.ProtocolTCP},
			{Name: InboundPortName, ContainerPort: p.InboundPort, Protocol: corev1.ProtocolTCP},
			{Name: OutboundPortName, ContainerPort: p.OutboundPort, Protocol: corev1.ProtocolTCP},
		},
		Env:       proxyEnv(p, probes),
		Resources: *p.Resources.DeepCopy(),
		VolumeMounts: []corev1.VolumeMount{
			{Name: ConfigVolumeName, MountPath: ConfigDir, ReadOnly: true},
			{Name: TrustVolumeName, MountPath: TrustDir, ReadOnly: true},
			{Name: TokenVolumeName, MountPath: TokenDir, ReadOnly: true},
			{Name: PodInfoVolumeName, MountPath: PodInfoDir, ReadOnly: true},
		},
		// Startup allows two minutes to obtain the first certificate: with native sidecars the application
		// starts only after it.
		StartupProbe:             adminProbe("/ready", 1, 120),
		ReadinessProbe:           adminProbe("/ready", 10, 3),
		LivenessProbe:            adminProbe("/live", 10, 3),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext: &corev1.SecurityContext{
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			RunAsUser:                ptr.To(p.ProxyUID),
			RunAsNonRoot:             ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(true),
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
}

func proxyEnv(p Params, probes Probes) []corev1.EnvVar {
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path},
		}}
	}
	return []corev1.EnvVar{
		{Name: EnvLogLevel, Value: p.LogLevel},
		{Name: EnvOutboundAddr, Value: fmt.Sprintf(":%d", p.OutboundPort)},
		{Name: EnvInboundAddr, Value: fmt.Sprintf(":%d", p.InboundPort)},
		{Name: EnvAdminAddr, Value: fmt.Sprintf(":%d", p.AdminPort)},
		{Name: EnvConfigDir, Value: ConfigDir},
		{Name: EnvIdentityAddr, Value: p.IdentityAddr},
		{Name: EnvIdentityServerName, Value: p.IdentityServerName},
		{Name: EnvTrustDomain, Value: p.TrustDomain},
		{Name: EnvTokenFile, Value: TokenDir + "/" + TokenFileName},
		{Name: EnvTrustBundleFile, Value: TrustDir + "/" + wellknown.TrustBundleKey},
		field(EnvPodNamespace, "metadata.namespace"),
		field(EnvPodName, "metadata.name"),
		field(EnvServiceAccount, "spec.serviceAccountName"),
		field(EnvPodIP, "status.podIP"),
		{Name: EnvPodLabelsFile, Value: PodInfoDir + "/" + PodLabelsFileName},
		{Name: EnvOpaquePorts, Value: p.OpaquePorts.String()},
		{Name: EnvInboundProbePaths, Value: probes.Paths.String()},
		{Name: EnvInboundProbePorts, Value: probes.Ports.String()},
	}
}

// volumes are the proxy's configuration, trust bundle, identity token and the pod's labels.
func volumes() []corev1.Volume {
	sources := make([]corev1.VolumeProjection, 0, wellknown.MaxProxyConfigMaps)
	for i := range wellknown.MaxProxyConfigMaps {
		name := wellknown.ProxyConfigName
		if i > 0 {
			name = fmt.Sprintf("%s-%d", wellknown.ProxyConfigName, i)
		}
		sources = append(sources, corev1.VolumeProjection{ConfigMap: &corev1.ConfigMapProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Optional: ptr.To(true),
		}})
	}
	return []corev1.Volume{
		{Name: ConfigVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: sources}}},
		{Name: TrustVolumeName, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: wellknown.TrustBundleName}, Optional: ptr.To(false),
		}}},
		{Name: TokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience:          wellknown.IdentityAudience,
				ExpirationSeconds: ptr.To[int64](TokenExpirationSeconds),
				Path:              TokenFileName,
			}}},
		}}},
		{Name: PodInfoVolumeName, VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
			Items: []corev1.DownwardAPIVolumeFile{{
				Path: PodLabelsFileName, FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.labels"},
			}},
		}}},
	}
}

// checkClashes refuses pods that already use a name or port the injection adds.
func checkClashes(spec *corev1.PodSpec, p Params) error {
	for _, name := range []string{InitContainerName, AwaitContainerName} {
		if hasContainer(spec.InitContainers, name) || hasContainer(spec.Containers, name) {
			return fmt.Errorf("the pod already has a container named %s", name)
		}
	}
	for _, v := range spec.Volumes {
		if v.Name == ConfigVolumeName || v.Name == TrustVolumeName || v.Name == TokenVolumeName || v.Name == PodInfoVolumeName {
			return fmt.Errorf("the pod already has a volume named %s", v.Name)
		}
	}
	proxyPorts := map[int32]string{p.OutboundPort: "outbound", p.InboundPort: "inbound", p.AdminPort: "admin"}
	for _, c := range append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...) {
		for _, port := range c.Ports {
			if use, ok := proxyPorts[port.ContainerPort]; ok && (port.Protocol == "" || port.Protocol == corev1.ProtocolTCP) {
				return fmt.Errorf("container %s declares port %d, the proxy's %s port", c.Name, port.ContainerPort, use)
			}
			if port.Name == AdminPortName || port.Name == InboundPortName || port.Name == OutboundPortName {
				return fmt.Errorf("container %s declares a port named %s, a name the proxy uses", c.Name, port.Name)
			}
		}
	}
	return nil
}

func hasContainer(cs []corev1.Container, name string) bool {
	for i := range cs {
		if cs[i].Name == name {
			return true
		}
	}
	return false
}
