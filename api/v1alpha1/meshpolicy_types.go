package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PolicyTargetReference names the Service a MeshPolicy applies to, in the policy's namespace.
type PolicyTargetReference struct {
	// Group of the target. Only the core group ("") is supported. Default: "".
	// +kubebuilder:validation:Enum=""
	// +optional
	Group string `json:"group,omitempty"`

	// Kind of the target. Only Service is supported. Default: Service.
	// +kubebuilder:validation:Enum=Service
	// +kubebuilder:default=Service
	// +optional
	Kind string `json:"kind,omitempty"`

	// Name of the Service. Required.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
}

// Timeouts bound the time a request may take.
type Timeouts struct {
	// Request bounds a whole request, retries included; on expiry the proxy answers 504 (gRPC
	// DEADLINE_EXCEEDED). Default: the Mesh's traffic.requestTimeout.
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="request timeout must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	Request *metav1.Duration `json:"request,omitempty"`

	// Idle closes a connection or stream that moves no bytes for this long. Default: 1h for TCP, none for HTTP.
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="idle timeout must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	Idle *metav1.Duration `json:"idle,omitempty"`
}

// RetryOn is a condition under which a request is retried.
// +kubebuilder:validation:Enum=5xx;gateway-error;reset;retriable-status-codes;cancelled;deadline-exceeded;internal;resource-exhausted;unavailable
type RetryOn string

// Backoff is an exponential backoff with full jitter.
// +kubebuilder:validation:XValidation:rule="!has(self.base) || !has(self.max) || duration(self.base) <= duration(self.max)",message="backoff base must not be longer than max"
type Backoff struct {
	// Base is the first delay. Default: 25ms.
	// +kubebuilder:default="25ms"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="backoff base must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	Base *metav1.Duration `json:"base,omitempty"`

	// Max caps the delay as it doubles. Default: 250ms.
	// +kubebuilder:default="250ms"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="backoff max must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	Max *metav1.Duration `json:"max,omitempty"`
}

// Retries says when and how often a failed request is tried again. Connect failures and refused streams are
// always retried; every retry spends the Mesh's retry budget.
// +kubebuilder:validation:XValidation:rule="!has(self.statusCodes) || (has(self.retryOn) && 'retriable-status-codes' in self.retryOn)",message="statusCodes requires 'retriable-status-codes' in retryOn"
type Retries struct {
	// RetryOn lists the failures that are retried: 5xx, gateway-error (502, 503, 504), reset, retriable-status-codes
	// (see statusCodes), and the gRPC codes cancelled, deadline-exceeded, internal, resource-exhausted, unavailable.
	// Default: none (only connect failures and refused streams).
	// +kubebuilder:validation:MaxItems=16
	// +listType=set
	// +optional
	RetryOn []RetryOn `json:"retryOn,omitempty"`

	// StatusCodes are the HTTP statuses retried with retriable-status-codes. Default: none.
	// +kubebuilder:validation:MaxItems=32
	// +listType=set
	// +kubebuilder:validation:items:Minimum=100
	// +kubebuilder:validation:items:Maximum=599
	// +optional
	StatusCodes []int32 `json:"statusCodes,omitempty"`

	// Attempts is the maximum number of retries per request. Default: 2.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	// +optional
	Attempts int32 `json:"attempts,omitempty"`

	// PerTryTimeout bounds each attempt. Default: unset (only the request timeout applies).
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="perTryTimeout must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	PerTryTimeout *metav1.Duration `json:"perTryTimeout,omitempty"`

	// Backoff between attempts. Default: 25ms doubling to 250ms, with jitter.
	// +optional
	Backoff *Backoff `json:"backoff,omitempty"`

	// NonIdempotent allows retrying methods that are not idempotent (POST, PATCH). Default: false.
	// +optional
	NonIdempotent bool `json:"nonIdempotent,omitempty"`

	// MaxBodyBytes is the largest request body buffered so it can be replayed; larger requests are not retried.
	// Default: 65536.
	// +kubebuilder:default=65536
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1048576
	// +optional
	MaxBodyBytes int32 `json:"maxBodyBytes,omitempty"`
}

// CircuitBreaking limits concurrency towards the target and ejects failing endpoints.
// +kubebuilder:validation:XValidation:rule="!has(self.minEjection) || !has(self.maxEjection) || duration(self.minEjection) <= duration(self.maxEjection)",message="minEjection must not be longer than maxEjection"
type CircuitBreaking struct {
	// MaxConnections per client proxy to the target. Default: unlimited.
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxConnections *int32 `json:"maxConnections,omitempty"`

	// MaxPendingRequests queued per client proxy while waiting for capacity; more get 503. Default: unlimited.
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxPendingRequests *int32 `json:"maxPendingRequests,omitempty"`

	// MaxRequests in flight per client proxy to the target. Default: unlimited.
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxRequests *int32 `json:"maxRequests,omitempty"`

	// ConsecutiveFailures after which an endpoint is ejected. Default: the Mesh's failure accrual (7).
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	ConsecutiveFailures *int32 `json:"consecutiveFailures,omitempty"`

	// MinEjection is the first ejection period. Default: the Mesh's failure accrual (1s).
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="minEjection must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	MinEjection *metav1.Duration `json:"minEjection,omitempty"`

	// MaxEjection caps the ejection period. Default: the Mesh's failure accrual (60s).
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="maxEjection must be greater than 0"
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	MaxEjection *metav1.Duration `json:"maxEjection,omitempty"`
}

// LoadBalancer is an endpoint-selection algorithm.
// +kubebuilder:validation:Enum=PeakEWMA;RoundRobin;LeastRequest
type LoadBalancer string

const (
	// LoadBalancerPeakEWMA picks the better of two random endpoints by peak-EWMA latency (the default).
	LoadBalancerPeakEWMA LoadBalancer = "PeakEWMA"
	// LoadBalancerRoundRobin cycles through endpoints.
	LoadBalancerRoundRobin LoadBalancer = "RoundRobin"
	// LoadBalancerLeastRequest picks the better of two random endpoints by requests in flight.
	LoadBalancerLeastRequest LoadBalancer = "LeastRequest"
)

// Route is a named class of requests with its own timeouts and retries; its name labels per-route metrics.
type Route struct {
	// Name of the route, unique in the policy; the `route` label of per-route metrics. Required.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// Matches select the route's requests: a request belongs to the first route with a matching entry.
	// Required, at least one.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	Matches []HTTPMatch `json:"matches"`

	// Timeouts for the route's requests. Default: the policy's timeouts.
	// +optional
	Timeouts *Timeouts `json:"timeouts,omitempty"`

	// Retries for the route's requests. Default: the policy's retries.
	// +optional
	Retries *Retries `json:"retries,omitempty"`
}

// AuthorizationAction is what happens to a request.
// +kubebuilder:validation:Enum=Allow;Deny
type AuthorizationAction string

const (
	// AuthorizationAllow lets the request through.
	AuthorizationAllow AuthorizationAction = "Allow"
	// AuthorizationDeny refuses it: 403 for HTTP, a closed connection for TCP.
	AuthorizationDeny AuthorizationAction = "Deny"
)

// ServiceAccountReference names a ServiceAccount.
type ServiceAccountReference struct {
	// Namespace of the ServiceAccount. Default: the policy's namespace.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// Name of the ServiceAccount. Required.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// AuthorizationSource is one kind of client. Exactly one field is set.
// +kubebuilder:validation:XValidation:rule="[has(self.identity), has(self.serviceAccount), has(self.namespace), has(self.unauthenticated) && self.unauthenticated].filter(x, x).size() == 1",message="set exactly one of identity, serviceAccount, namespace or unauthenticated: true"
type AuthorizationSource struct {
	// Identity is a client's SPIFFE ID, e.g. spiffe://cluster.local/ns/shop/sa/web; a trailing "*" matches any
	// ID with that prefix.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('spiffe://')",message="identity must be a SPIFFE ID starting with spiffe://"
	// +optional
	Identity string `json:"identity,omitempty"`

	// ServiceAccount matches meshed clients running as this ServiceAccount.
	// +optional
	ServiceAccount *ServiceAccountReference `json:"serviceAccount,omitempty"`

	// Namespace matches meshed clients from this namespace.
	// +kubebuilder:validation:MaxLength=63
	// +optional
	Namespace string `json:"namespace,omitempty"`

	// Unauthenticated matches clients without a mesh identity (plaintext or non-mesh TLS).
	// +optional
	Unauthenticated bool `json:"unauthenticated,omitempty"`
}

// AuthorizationTarget is a part of the target's traffic: every field that is set must match.
type AuthorizationTarget struct {
	// Ports the rule covers. Default: every port of the policy.
	// +kubebuilder:validation:MaxItems=32
	// +listType=set
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	// +optional
	Ports []int32 `json:"ports,omitempty"`

	// Paths the rule covers, as path prefixes (HTTP only). Default: every path.
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MaxLength=1024
	// +kubebuilder:validation:items:XValidation:rule="self.startsWith('/')",message="each path must start with '/'"
	// +optional
	Paths []string `json:"paths,omitempty"`

	// Methods the rule covers (HTTP only). Default: every method.
	// +kubebuilder:validation:MaxItems=9
	// +listType=set
	// +optional
	Methods []HTTPMethod `json:"methods,omitempty"`
}

// AuthorizationRule allows some clients to reach some of the target's traffic.
type AuthorizationRule struct {
	// Name of the rule, unique in the policy; the `rule` label of authorization metrics. Required.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// From lists the clients the rule allows; a client matching any entry is allowed. Required, at least one.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	From []AuthorizationSource `json:"from"`

	// To limits the rule to parts of the traffic; traffic matching any entry is covered. Default: all of it.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	To []AuthorizationTarget `json:"to,omitempty"`
}

// Authorization says who may send traffic to the target.
type Authorization struct {
	// DefaultAction applies to traffic that no rule allows. Default: Deny when rules are given; the Mesh's
	// defaultPolicy otherwise.
	// +optional
	DefaultAction AuthorizationAction `json:"defaultAction,omitempty"`

	// Rules allow clients. Default: none.
	// +kubebuilder:validation:MaxItems=64
	// +listType=map
	// +listMapKey=name
	// +optional
	Rules []AuthorizationRule `json:"rules,omitempty"`
}

// MeshPolicySpec is the desired behaviour of traffic to a target.
// +kubebuilder:validation:XValidation:rule="has(self.targetRef) != has(self.workloadSelector)",message="set exactly one of targetRef (a Service) or workloadSelector (pods)"
// +kubebuilder:validation:XValidation:rule="!has(self.workloadSelector) || !has(self.routes)",message="routes need a Service targetRef: a workloadSelector policy carries authorization only"
type MeshPolicySpec struct {
	// TargetRef is the Service whose traffic the policy shapes (client side) and authorizes (server side).
	// +optional
	TargetRef *PolicyTargetReference `json:"targetRef,omitempty"`

	// WorkloadSelector selects pods in the policy's namespace whose inbound traffic the policy authorizes.
	// +optional
	WorkloadSelector *metav1.LabelSelector `json:"workloadSelector,omitempty"`

	// Ports the policy applies to: Service ports for a targetRef, container ports for a workloadSelector.
	// Default: every port.
	// +kubebuilder:validation:MaxItems=32
	// +listType=set
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	// +optional
	Ports []int32 `json:"ports,omitempty"`

	// Timeouts for requests to the target. Default: the Mesh's traffic defaults.
	// +optional
	Timeouts *Timeouts `json:"timeouts,omitempty"`

	// Retries for requests to the target. Default: connect failures and refused streams only.
	// +optional
	Retries *Retries `json:"retries,omitempty"`

	// CircuitBreaking limits for the target. Default: unlimited, with the Mesh's failure accrual.
	// +optional
	CircuitBreaking *CircuitBreaking `json:"circuitBreaking,omitempty"`

	// LoadBalancer chooses the endpoint-selection algorithm: PeakEWMA, RoundRobin or LeastRequest. Default: PeakEWMA.
	// +optional
	LoadBalancer LoadBalancer `json:"loadBalancer,omitempty"`

	// Routes split the target's HTTP traffic into named classes with their own timeouts and retries.
	// Default: none (one route, "default").
	// +kubebuilder:validation:MaxItems=64
	// +listType=map
	// +listMapKey=name
	// +optional
	Routes []Route `json:"routes,omitempty"`

	// Authorization says who may send traffic to the target. Default: the Mesh's defaultPolicy.
	// +optional
	Authorization *Authorization `json:"authorization,omitempty"`
}

// MeshPolicyStatus is the observed state of a MeshPolicy.
type MeshPolicyStatus struct {
	// ObservedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Accepted and ResolvedRefs.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// MeshPolicy shapes and authorizes the traffic to a Service or to a set of pods.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mp;mpol,categories=trellis
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.spec.targetRef.name`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired state.
	Spec MeshPolicySpec `json:"spec"`
	// Status is the observed state, written by the manager.
	// +optional
	Status MeshPolicyStatus `json:"status,omitempty"`
}

// MeshPolicyList is a list of MeshPolicy.
//
// +kubebuilder:object:root=true
type MeshPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the policies.
	Items []MeshPolicy `json:"items"`
}
