package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ProxyMode says how the data plane is deployed.
// +kubebuilder:validation:Enum=Sidecar;DaemonSet
type ProxyMode string

const (
	// ProxyModeSidecar injects a proxy into every meshed pod (the default).
	ProxyModeSidecar ProxyMode = "Sidecar"
	// ProxyModeDaemonSet runs one proxy per node that serves every meshed pod on that node.
	ProxyModeDaemonSet ProxyMode = "DaemonSet"
)

// DefaultPolicy is what inbound traffic a meshed pod accepts when no MeshPolicy authorizes it explicitly.
// +kubebuilder:validation:Enum=AllUnauthenticated;AllAuthenticated;ClusterAuthenticated;Deny
type DefaultPolicy string

const (
	// DefaultPolicyAllUnauthenticated allows every client, meshed or not (the default: adoption breaks nothing).
	DefaultPolicyAllUnauthenticated DefaultPolicy = "AllUnauthenticated"
	// DefaultPolicyAllAuthenticated allows only clients with a mesh identity from any trust domain the mesh trusts.
	DefaultPolicyAllAuthenticated DefaultPolicy = "AllAuthenticated"
	// DefaultPolicyClusterAuthenticated allows meshed clients of this mesh's trust domain and unauthenticated
	// clients from inside the cluster's pod and service networks.
	DefaultPolicyClusterAuthenticated DefaultPolicy = "ClusterAuthenticated"
	// DefaultPolicyDeny refuses everything that no MeshPolicy rule allows (kubelet probes are still allowed).
	DefaultPolicyDeny DefaultPolicy = "Deny"
)

// LogLevel is the proxy's log verbosity.
// +kubebuilder:validation:Enum=debug;info;warn;error
type LogLevel string

// IssuerReference names a cert-manager Issuer or ClusterIssuer.
type IssuerReference struct {
	// Name of the issuer. Required.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Kind of the issuer: Issuer (in the control-plane namespace) or ClusterIssuer. Default: Issuer.
	// +kubebuilder:validation:Enum=Issuer;ClusterIssuer
	// +kubebuilder:default=Issuer
	// +optional
	Kind string `json:"kind,omitempty"`

	// Group of the issuer's API. Default: cert-manager.io (external issuers use their own group).
	// +kubebuilder:default="cert-manager.io"
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Group string `json:"group,omitempty"`
}

// IdentitySpec configures the certificates that carry workload identity.
// +kubebuilder:validation:XValidation:rule="!has(self.issuerLifetime) || !has(self.workloadCertLifetime) || duration(self.workloadCertLifetime) < duration(self.issuerLifetime)",message="workloadCertLifetime must be shorter than issuerLifetime: a workload certificate may not outlive the issuer that signed it"
// +kubebuilder:validation:XValidation:rule="!has(self.issuerLifetime) || !has(self.issuerRenewBefore) || duration(self.issuerRenewBefore) < duration(self.issuerLifetime)",message="issuerRenewBefore must be shorter than issuerLifetime"
type IdentitySpec struct {
	// IssuerRef names the cert-manager Issuer or ClusterIssuer (Vault, an existing CA, ...) that signs the identity
	// issuer certificate; the trust anchor is then that issuer's CA. Default: unset, and Trellis creates a
	// self-signed trust anchor and a CA Issuer in the control-plane namespace.
	// +optional
	IssuerRef *IssuerReference `json:"issuerRef,omitempty"`

	// TrustAnchorLifetime is the lifetime of the self-signed trust anchor Trellis creates when issuerRef is unset.
	// Default: 8760h (one year).
	// +kubebuilder:default="8760h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h')",message="trustAnchorLifetime must be at least 1h"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	TrustAnchorLifetime *metav1.Duration `json:"trustAnchorLifetime,omitempty"`

	// IssuerLifetime is the lifetime of the identity issuer certificate. Default: 48h.
	// +kubebuilder:default="48h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1h')",message="issuerLifetime must be at least 1h"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	IssuerLifetime *metav1.Duration `json:"issuerLifetime,omitempty"`

	// IssuerRenewBefore is how long before expiry cert-manager renews the identity issuer. Default: 25h.
	// +kubebuilder:default="25h"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="issuerRenewBefore must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	IssuerRenewBefore *metav1.Duration `json:"issuerRenewBefore,omitempty"`

	// WorkloadCertLifetime is the lifetime of the leaf certificate each proxy gets; proxies renew at about 70% of
	// it. Default: 24h.
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('5m')",message="workloadCertLifetime must be at least 5m"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	WorkloadCertLifetime *metav1.Duration `json:"workloadCertLifetime,omitempty"`
}

// ProxyPorts are the ports the proxy listens on inside each meshed pod (or node, in DaemonSet mode).
// +kubebuilder:validation:XValidation:rule="self.outbound != self.inbound && self.outbound != self.admin && self.inbound != self.admin",message="outbound, inbound and admin ports must be distinct"
type ProxyPorts struct {
	// Outbound receives traffic the application sends. Default: 4140.
	// +kubebuilder:default=4140
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Outbound int32 `json:"outbound,omitempty"`

	// Inbound receives traffic addressed to the application. Default: 4143.
	// +kubebuilder:default=4143
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Inbound int32 `json:"inbound,omitempty"`

	// Admin serves /metrics, /ready, /live, /config and /shutdown. Default: 4191.
	// +kubebuilder:default=4191
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Admin int32 `json:"admin,omitempty"`
}

// ProxySpec configures the data plane.
type ProxySpec struct {
	// Mode is Sidecar (a proxy in every meshed pod) or DaemonSet (one proxy per node). Default: Sidecar.
	// +kubebuilder:default=Sidecar
	// +optional
	Mode ProxyMode `json:"mode,omitempty"`

	// Image is the proxy container image. Default: empty, meaning the image the manager was started with
	// (its --proxy-image flag, set by the installation).
	// +kubebuilder:validation:MaxLength=512
	// +optional
	Image string `json:"image,omitempty"`

	// ImagePullPolicy of the proxy and proxy-init containers. Default: IfNotPresent.
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	// +kubebuilder:default=IfNotPresent
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`

	// Resources of the proxy container. Default: requests of 10m CPU and 20Mi memory, no limits.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// LogLevel of the proxy: debug, info, warn or error. Default: info.
	// +kubebuilder:default=info
	// +optional
	LogLevel LogLevel `json:"logLevel,omitempty"`

	// Ports the proxy listens on. Default: outbound 4140, inbound 4143, admin 4191.
	// +kubebuilder:default={outbound:4140,inbound:4143,admin:4191}
	// +optional
	Ports ProxyPorts `json:"ports,omitempty"`

	// SkipInboundPorts are application ports whose inbound traffic bypasses the proxy. Default: none.
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	// +optional
	SkipInboundPorts []int32 `json:"skipInboundPorts,omitempty"`

	// SkipOutboundPorts are destination ports whose outbound traffic bypasses the proxy. Default: none.
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	// +optional
	SkipOutboundPorts []int32 `json:"skipOutboundPorts,omitempty"`

	// OpaquePorts are ports whose traffic is proxied as opaque TCP without protocol detection (server-speaks-first
	// protocols such as MySQL or SMTP). Default: 25, 587, 3306, 4444, 5432, 6379, 9300, 11211.
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	// +kubebuilder:default={25,587,3306,4444,5432,6379,9300,11211}
	// +optional
	OpaquePorts []int32 `json:"opaquePorts,omitempty"`

	// IgnoredCIDRs are destination networks whose outbound traffic bypasses the proxy. Default: none.
	// +kubebuilder:validation:MaxItems=32
	// +listType=set
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="each ignoredCIDRs entry must be a CIDR such as 10.0.0.0/8 or fd00::/8"
	// +optional
	IgnoredCIDRs []string `json:"ignoredCIDRs,omitempty"`

	// NativeSidecar runs the proxy as a native sidecar (an init container with restartPolicy Always), so the
	// application starts after the proxy is ready and Jobs complete. Set false for clusters older than 1.29,
	// where the proxy becomes a regular container. Default: true.
	// +kubebuilder:default=true
	// +optional
	NativeSidecar *bool `json:"nativeSidecar,omitempty"`
}

// RetryBudget bounds retries so they can never amplify an outage: retries may add at most Ratio of the original
// requests plus MinPerSecond, measured over TTL.
type RetryBudget struct {
	// Ratio of retries to original requests, a decimal between 0 and 1 written as a string. Default: "0.2".
	// +kubebuilder:default="0.2"
	// +kubebuilder:validation:MaxLength=8
	// +kubebuilder:validation:XValidation:rule="self.matches('^(0(\\\\.[0-9]+)?|1(\\\\.0+)?|\\\\.[0-9]+)$')",message="ratio must be a decimal between 0 and 1, such as \"0.2\""
	// +optional
	Ratio string `json:"ratio,omitempty"`

	// MinPerSecond is the number of retries per second always allowed, whatever the ratio. Default: 10.
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100000
	// +optional
	MinPerSecond int32 `json:"minPerSecond,omitempty"`

	// TTL is the window over which requests and retries are counted. Default: 10s.
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('60s')",message="ttl must be between 1s and 60s"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	TTL *metav1.Duration `json:"ttl,omitempty"`
}

// FailureAccrual ejects an endpoint from load balancing after consecutive failures and probes it back with
// exponential backoff.
// +kubebuilder:validation:XValidation:rule="!has(self.minBackoff) || !has(self.maxBackoff) || duration(self.minBackoff) <= duration(self.maxBackoff)",message="minBackoff must not be longer than maxBackoff"
type FailureAccrual struct {
	// ConsecutiveFailures after which an endpoint is ejected. Default: 7.
	// +kubebuilder:default=7
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	ConsecutiveFailures int32 `json:"consecutiveFailures,omitempty"`

	// MinBackoff is the first ejection period. Default: 1s.
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="minBackoff must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	MinBackoff *metav1.Duration `json:"minBackoff,omitempty"`

	// MaxBackoff caps the ejection period as it doubles. Default: 60s.
	// +kubebuilder:default="60s"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="maxBackoff must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	MaxBackoff *metav1.Duration `json:"maxBackoff,omitempty"`
}

// TrafficDefaults apply to every meshed service unless a MeshPolicy overrides them.
type TrafficDefaults struct {
	// RequestTimeout bounds a whole HTTP request, retries included. Default: unset (no timeout).
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="requestTimeout must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	RequestTimeout *metav1.Duration `json:"requestTimeout,omitempty"`

	// RetryBudget bounds retries. Default: ratio 0.2, minPerSecond 10, ttl 10s.
	// +kubebuilder:default={}
	// +optional
	RetryBudget RetryBudget `json:"retryBudget,omitempty"`

	// FailureAccrual ejects failing endpoints. Default: 7 consecutive failures, backoff 1s to 60s.
	// +kubebuilder:default={}
	// +optional
	FailureAccrual FailureAccrual `json:"failureAccrual,omitempty"`
}

// MeshSpec is the desired state of a mesh.
type MeshSpec struct {
	// NamespaceSelector selects the namespaces that belong to this mesh: Trellis writes the trust bundle and proxy
	// configuration into each of them, and injects proxies into their pods. A namespace may belong to one Mesh only.
	// kube-system, kube-public, kube-node-lease and the control-plane namespace are never meshed.
	// Default: namespaces labelled trellis.io/inject=enabled.
	// +kubebuilder:default={matchLabels:{"trellis.io/inject":"enabled"}}
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`

	// ControlPlaneNamespace holds the identity issuer, its certificates and the identity service. Immutable.
	// Default: trellis-system.
	// +kubebuilder:default=trellis-system
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="controlPlaneNamespace is immutable: create a new Mesh to move the control plane"
	// +optional
	ControlPlaneNamespace string `json:"controlPlaneNamespace,omitempty"`

	// TrustDomain is the SPIFFE trust domain of workload identities, spiffe://<trustDomain>/ns/<ns>/sa/<sa>.
	// Immutable, because changing it invalidates every issued identity. Default: cluster.local.
	// +kubebuilder:default="cluster.local"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="trustDomain is immutable: every issued identity would become invalid"
	// +optional
	TrustDomain string `json:"trustDomain,omitempty"`

	// Identity configures the certificate chain behind workload identity. Default: a self-signed anchor and a
	// 48h identity issuer renewed 25h before expiry; 24h workload certificates.
	// +kubebuilder:default={}
	// +optional
	Identity IdentitySpec `json:"identity,omitempty"`

	// Proxy configures the data plane. Default: sidecars with native sidecar ordering.
	// +kubebuilder:default={}
	// +optional
	Proxy ProxySpec `json:"proxy,omitempty"`

	// DefaultPolicy is the inbound authorization of meshed pods that no MeshPolicy covers. Default:
	// AllUnauthenticated.
	// +kubebuilder:default=AllUnauthenticated
	// +optional
	DefaultPolicy DefaultPolicy `json:"defaultPolicy,omitempty"`

	// Traffic holds the defaults for timeouts, retry budgets and failure accrual.
	// +kubebuilder:default={}
	// +optional
	Traffic TrafficDefaults `json:"traffic,omitempty"`
}

// ProxyCounts counts the mesh's proxies.
type ProxyCounts struct {
	// Desired is the number of proxies that should run: injected pods, or nodes in DaemonSet mode.
	// +optional
	Desired int32 `json:"desired,omitempty"`
	// Ready is the number of those proxies that report ready.
	// +optional
	Ready int32 `json:"ready,omitempty"`
	// Summary is "ready/desired", for display.
	Summary string `json:"summary,omitempty"`
}

// MeshStatus is the observed state of a mesh.
type MeshStatus struct {
	// ObservedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready, Accepted, IdentityReady, ConfigReady, ProxiesReady and WebhookReady.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// MeshedNamespaces is the number of namespaces this mesh selects.
	// +optional
	MeshedNamespaces int32 `json:"meshedNamespaces,omitempty"`

	// Proxies counts the mesh's proxies.
	// +optional
	Proxies ProxyCounts `json:"proxies,omitempty"`

	// TrustAnchorExpiry is when the current trust anchor certificate expires.
	// +optional
	TrustAnchorExpiry *metav1.Time `json:"trustAnchorExpiry,omitempty"`

	// IssuerExpiry is when the current identity issuer certificate expires.
	// +optional
	IssuerExpiry *metav1.Time `json:"issuerExpiry,omitempty"`

	// ConfigHash is the content hash of the proxy configuration last rendered; proxies report the hash they run
	// at /config, so `trellis check` can prove every proxy runs it.
	// +optional
	ConfigHash string `json:"configHash,omitempty"`
}

// Mesh is a service mesh: the namespaces it covers, its identity, its proxies and its traffic defaults.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=msh,categories=trellis
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.proxy.mode`
// +kubebuilder:printcolumn:name="Namespaces",type=integer,JSONPath=`.status.meshedNamespaces`
// +kubebuilder:printcolumn:name="Proxies",type=string,JSONPath=`.status.proxies.summary`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Mesh struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired state.
	// +kubebuilder:default={}
	// +optional
	Spec MeshSpec `json:"spec,omitempty"`
	// Status is the observed state, written by the manager.
	// +optional
	Status MeshStatus `json:"status,omitempty"`
}

// MeshList is a list of Mesh.
//
// +kubebuilder:object:root=true
type MeshList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the meshes.
	Items []Mesh `json:"items"`
}
