// Package proxyconfig is the contract between the Trellis operator and the Trellis proxy: the versioned document the
// operator renders into ConfigMaps and the proxy reads from its mounted volume.
//
// The document is decoded strictly (unknown fields are errors), defaulted in one place (SetDefaults), validated with
// field paths (Validate) and hashed over its canonical form (Hash). docs/proxy-config.md describes every field and
// says which ones the proxy enforces today.
package proxyconfig

import (
	"encoding/json"
	"fmt"
	"time"
)

// APIVersion is the only schema version this package decodes.
const APIVersion = "proxy.trellis.io/v1alpha1"

// Config is one proxy configuration document (or the merge of several shards, see LoadDir).
type Config struct {
	// APIVersion names the schema; it must be APIVersion ("proxy.trellis.io/v1alpha1"). Required.
	APIVersion string `json:"apiVersion"`
	// Version identifies this rendering of the configuration (for example the Mesh generation and a counter). It is
	// opaque to the proxy, reported by /config, and every shard of one configuration carries the same value. Required.
	Version string `json:"version"`
	// ClusterDomain is the cluster's DNS domain, used to build service authorities for metrics. Default "cluster.local".
	ClusterDomain string `json:"clusterDomain,omitempty"`
	// Defaults holds mesh-wide defaults for timeouts, retries, failure accrual and load balancing. When sharded, at most
	// one shard may set it. Default: every field at its own default.
	Defaults *Defaults `json:"defaults,omitempty"`
	// Services maps cluster IP and port pairs to meshed services and their routes, backends and endpoints. Default empty:
	// every outbound destination is forwarded as plain TCP.
	Services []Service `json:"services,omitempty"`
	// Inbound describes the ports this workload serves and their authorization policy. Default: no per-port settings.
	Inbound *Inbound `json:"inbound,omitempty"`
	// OpaquePorts lists destination ports on which protocol detection is skipped, inbound and outbound: traffic to them
	// is forwarded as TCP at once (use it for server-speaks-first protocols such as MySQL or SMTP). Default empty.
	OpaquePorts []int32 `json:"opaquePorts,omitempty"`
}

// Defaults are mesh-wide settings that services and routes inherit.
type Defaults struct {
	// DetectTimeout bounds how long the proxy waits for a client's first bytes before it treats a connection as opaque
	// TCP. Default 1s.
	DetectTimeout *Duration `json:"detectTimeout,omitempty"`
	// ConnectTimeout bounds establishing a connection to an endpoint or application. Default 1s.
	ConnectTimeout *Duration `json:"connectTimeout,omitempty"`
	// RequestTimeout bounds the time from receiving an HTTP request to receiving the response headers from upstream;
	// on expiry the client gets 504. Routes may override it. Default 0s: no timeout.
	RequestTimeout *Duration `json:"requestTimeout,omitempty"`
	// TCPIdleTimeout closes an opaque TCP connection after no bytes moved in either direction for this long. Default 1h.
	TCPIdleTimeout *Duration `json:"tcpIdleTimeout,omitempty"`
	// HTTPIdleTimeout closes an idle keep-alive HTTP connection (client side and pooled upstream side). Default 90s.
	HTTPIdleTimeout *Duration `json:"httpIdleTimeout,omitempty"`
	// RetryBudget bounds retries mesh-wide. Default ratio 0.2, minRetriesPerSecond 10, ttl 10s.
	RetryBudget *RetryBudget `json:"retryBudget,omitempty"`
	// FailureAccrual ejects endpoints that keep failing. Default consecutiveFailures 7, backoff 1s to 60s.
	FailureAccrual *FailureAccrual `json:"failureAccrual,omitempty"`
	// LoadBalancer picks an endpoint within a backend: "ewma", "leastRequest", "roundRobin" or "random". Services may
	// override it. Default "ewma".
	LoadBalancer string `json:"loadBalancer,omitempty"`
}

// Load balancer names accepted in Defaults.LoadBalancer and Service.LoadBalancer.
const (
	// LoadBalancerEWMA picks the cheaper of two random endpoints by peak-EWMA latency times requests in flight
	// (Linkerd's balancer).
	LoadBalancerEWMA = "ewma"
	// LoadBalancerLeastRequest picks the one of two random endpoints with fewer requests in flight.
	LoadBalancerLeastRequest = "leastRequest"
	// LoadBalancerRoundRobin cycles through a backend's endpoints in order.
	LoadBalancerRoundRobin = "roundRobin"
	// LoadBalancerRandom picks a backend's endpoint uniformly at random.
	LoadBalancerRandom = "random"
)

// RetryBudget limits retries to a fraction of live traffic plus a floor, in the style of Finagle and Linkerd.
type RetryBudget struct {
	// Ratio is the fraction of requests that may be retried, in [0, 1]. Default 0.2.
	Ratio *float64 `json:"ratio,omitempty"`
	// MinRetriesPerSecond is the retry rate allowed regardless of Ratio. Default 10.
	MinRetriesPerSecond *int32 `json:"minRetriesPerSecond,omitempty"`
	// TTL is the window over which requests and retries are counted. Default 10s.
	TTL *Duration `json:"ttl,omitempty"`
}

// FailureAccrual decides when an endpoint is ejected from load balancing and how it is probed back.
type FailureAccrual struct {
	// ConsecutiveFailures ejects an endpoint after this many failures in a row. Default 7.
	ConsecutiveFailures *int32 `json:"consecutiveFailures,omitempty"`
	// MinBackoff is the first ejection period; it doubles up to MaxBackoff. Default 1s.
	MinBackoff *Duration `json:"minBackoff,omitempty"`
	// MaxBackoff caps the ejection period. Default 60s.
	MaxBackoff *Duration `json:"maxBackoff,omitempty"`
}

// Protocol hints name what a port carries.
const (
	// ProtocolDetect (the empty string) lets the proxy detect the protocol by peeking at the first bytes.
	ProtocolDetect = ""
	// ProtocolHTTP1 hints HTTP/1.x.
	ProtocolHTTP1 = "http1"
	// ProtocolHTTP2 hints HTTP/2 with prior knowledge (gRPC).
	ProtocolHTTP2 = "http2"
	// ProtocolOpaque skips detection and forwards TCP.
	ProtocolOpaque = "opaque"
)

// Service is one port of a Kubernetes Service as the proxy sees it: the addresses clients dial, and where requests go.
type Service struct {
	// Name is the Kubernetes Service name. Required.
	Name string `json:"name"`
	// Namespace is the Service's namespace. Required.
	Namespace string `json:"namespace"`
	// ClusterIPs are the Service's cluster IPs (IPv4 and/or IPv6). At least one is required.
	ClusterIPs []string `json:"clusterIPs"`
	// Port is the Service port clients dial (1-65535). Required.
	Port int32 `json:"port"`
	// Protocol is the port's protocol hint: "" (detect), "http1", "http2" or "opaque". Default "" (detect).
	Protocol string `json:"protocol,omitempty"`
	// Backends are the weighted destinations of requests that match no route, and of all opaque TCP connections.
	// At least one is required.
	Backends []Backend `json:"backends"`
	// Routes are matched in order against each HTTP request; the first match decides. Default empty: every request
	// goes to Backends.
	Routes []Route `json:"routes,omitempty"`
	// LoadBalancer overrides Defaults.LoadBalancer for this service's backends. Default "": Defaults.LoadBalancer.
	LoadBalancer string `json:"loadBalancer,omitempty"`
	// FailureAccrual overrides Defaults.FailureAccrual for this service; fields left unset take the value of
	// Defaults.FailureAccrual. Default: Defaults.FailureAccrual.
	FailureAccrual *FailureAccrual `json:"failureAccrual,omitempty"`
	// MaxConnections bounds the opaque TCP connections this proxy relays to the service at once (at least 1); a
	// connection beyond it is closed. Default: unlimited.
	MaxConnections *int32 `json:"maxConnections,omitempty"`
	// MaxRequests bounds the HTTP requests this proxy has in flight to the service at once (at least 1); further
	// requests wait for a free slot (see MaxPendingRequests). Default: unlimited.
	MaxRequests *int32 `json:"maxRequests,omitempty"`
	// MaxPendingRequests bounds the requests waiting for a slot when MaxRequests are in flight (0 or more); a request
	// beyond it, or one whose request timeout expires while it waits, gets 503. Default: unlimited.
	MaxPendingRequests *int32 `json:"maxPendingRequests,omitempty"`
}

// Backend is a set of endpoints that receives a weighted share of a service's traffic (a TrafficSplit leg).
type Backend struct {
	// Name identifies the backend within its service (usually the leaf Service name); routes refer to it. Required.
	Name string `json:"name"`
	// Namespace is the leaf Service's namespace, used in metrics. Default: the service's namespace.
	Namespace string `json:"namespace,omitempty"`
	// Weight is the backend's relative share of traffic (0 takes none). Default 1.
	Weight *int32 `json:"weight,omitempty"`
	// Endpoints are the backend's ready endpoints. Default empty: requests to this backend fail with 503.
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// Unresolved, when set, says why the backend does not exist (e.g. a TrafficSplit names a missing Service):
	// requests sent to it fail with 500 and a trellis-proxy-error header carrying this text, instead of 503.
	// Default empty.
	Unresolved string `json:"unresolved,omitempty"`
}

// Endpoint is one pod address behind a backend.
type Endpoint struct {
	// Address is the endpoint's "ip:port" (IPv6 as "[ip]:port"). Required.
	Address string `json:"address"`
	// Identity is the SPIFFE ID the endpoint's proxy must present in mTLS
	// (spiffe://<trustDomain>/ns/<ns>/sa/<sa>). Empty means the endpoint is not meshed. Default empty.
	Identity string `json:"identity,omitempty"`
	// Zone is the endpoint's topology zone, for locality-aware balancing. Default empty.
	Zone string `json:"zone,omitempty"`
}

// Route selects HTTP requests of a service and says how to serve them.
type Route struct {
	// Name labels the route in metrics (the "route" label). Required, unique within the service.
	Name string `json:"name"`
	// Matches select requests; a request matches when any one match matches. Default empty: matches every request.
	Matches []Match `json:"matches,omitempty"`
	// Backends overrides the service's backend weights for this route; names must exist in the service's Backends.
	// Default empty: the service's backends with their weights.
	Backends []BackendRef `json:"backends,omitempty"`
	// Timeout overrides Defaults.RequestTimeout for this route. Default: Defaults.RequestTimeout.
	Timeout *Duration `json:"timeout,omitempty"`
	// Retry makes failed requests of this route retryable within the retry budget. Default: no retries.
	Retry *RetryPolicy `json:"retry,omitempty"`
	// RequestHeaders changes the request's headers before it is forwarded. Default: none.
	RequestHeaders *HeaderModifier `json:"requestHeaders,omitempty"`
	// ResponseHeaders changes the response's headers before it is returned. Default: none.
	ResponseHeaders *HeaderModifier `json:"responseHeaders,omitempty"`
	// DirectResponse makes the proxy answer the route's requests itself, without forwarding them; Backends, Retry and
	// the header modifiers must then be empty. Default: none (requests are forwarded).
	DirectResponse *DirectResponse `json:"directResponse,omitempty"`
}

// DirectResponse is an answer the proxy gives without forwarding the request: the status, with the reason in the
// Trellis-Proxy-Error header (for gRPC, the status mapped to a gRPC code).
type DirectResponse struct {
	// Status is the HTTP status, 200-599. Required.
	Status int32 `json:"status"`
	// Reason says why, in the Trellis-Proxy-Error header and the proxy's log. Default: the status text.
	Reason string `json:"reason,omitempty"`
}

// HeaderModifier changes HTTP headers, in the order Remove, Set, Add (the Gateway API's semantics).
type HeaderModifier struct {
	// Set replaces each named header's values with the given value. Default empty.
	Set []HeaderValue `json:"set,omitempty"`
	// Add appends a value to each named header. Default empty.
	Add []HeaderValue `json:"add,omitempty"`
	// Remove deletes the named headers. Default empty.
	Remove []string `json:"remove,omitempty"`
}

// HeaderValue is a header name and value.
type HeaderValue struct {
	// Name is the header name, case-insensitive. Required.
	Name string `json:"name"`
	// Value is the header value. Required (may be empty).
	Value string `json:"value"`
}

// BackendRef weights one of a service's backends for a route.
type BackendRef struct {
	// Name is a Backend.Name of the same service. Required.
	Name string `json:"name"`
	// Weight is the backend's relative share for this route. Default 1.
	Weight *int32 `json:"weight,omitempty"`
}

// Match is a conjunction of request conditions: a request matches when all set conditions hold.
type Match struct {
	// Path matches the request path. Default: any path.
	Path *PathMatch `json:"path,omitempty"`
	// Method matches the request method exactly (for example "GET"). Default: any method.
	Method string `json:"method,omitempty"`
	// Headers must all match. Default empty.
	Headers []HeaderMatch `json:"headers,omitempty"`
}

// Match types for paths and headers.
const (
	// MatchExact compares the whole value.
	MatchExact = "Exact"
	// MatchPathPrefix matches a path prefix on segment boundaries ("/a" matches "/a" and "/a/b", not "/ab").
	MatchPathPrefix = "PathPrefix"
	// MatchRegularExpression matches an RE2 regular expression against the whole value.
	MatchRegularExpression = "RegularExpression"
)

// PathMatch matches the request path.
type PathMatch struct {
	// Type is "Exact", "PathPrefix" or "RegularExpression". Default "PathPrefix".
	Type string `json:"type,omitempty"`
	// Value is the path or expression; Exact and PathPrefix values start with "/". Required.
	Value string `json:"value"`
}

// HeaderMatch matches one request header.
type HeaderMatch struct {
	// Name is the header name, case-insensitive. Required.
	Name string `json:"name"`
	// Type is "Exact" or "RegularExpression". Default "Exact".
	Type string `json:"type,omitempty"`
	// Value is the value or expression. Required.
	Value string `json:"value"`
}

// RetryPolicy says which failures of a route are retried.
type RetryPolicy struct {
	// Attempts is the maximum number of retries per request, beyond the first try. Default 1.
	Attempts *int32 `json:"attempts,omitempty"`
	// RetryOn lists retryable outcomes: "connect-failure", "refused-stream" (both always retried), "5xx",
	// "gateway-error" (502, 503, 504), "reset", a status code such as "503", or a gRPC status name: "cancelled",
	// "deadline-exceeded", "resource-exhausted", "internal", "unavailable". Default ["connect-failure"].
	RetryOn []string `json:"retryOn,omitempty"`
	// PerTryTimeout bounds each attempt's wait for response headers. Default 0s: only the route timeout applies.
	PerTryTimeout *Duration `json:"perTryTimeout,omitempty"`
	// NonIdempotent allows retrying requests whose method is not idempotent (POST, PATCH, ...) on 5xx,
	// gateway-error, reset and status codes. Default false.
	NonIdempotent bool `json:"nonIdempotent,omitempty"`
	// Backoff spaces retries exponentially with full jitter. Default base 25ms, max 250ms.
	Backoff *RetryBackoff `json:"backoff,omitempty"`
	// MaxBodyBytes is the largest request body buffered for replay, 0 to 1048576; a request with a larger body is
	// retried only after a connect failure or refused stream. Default 65536.
	MaxBodyBytes *int32 `json:"maxBodyBytes,omitempty"`
}

// RetryBackoff is an exponential backoff with full jitter: retry n waits a random time up to min(Max, Base×2^n).
type RetryBackoff struct {
	// Base is the ceiling of the first retry's delay. Default 25ms.
	Base *Duration `json:"base,omitempty"`
	// Max caps every delay; at least Base. Default 250ms.
	Max *Duration `json:"max,omitempty"`
}

// Inbound describes how the proxy serves the workload's own ports.
type Inbound struct {
	// DefaultPolicy applies to ports without their own policy: "all-unauthenticated", "all-authenticated",
	// "cluster-authenticated" or "deny". Default "all-unauthenticated".
	DefaultPolicy string `json:"defaultPolicy,omitempty"`
	// Ports are the workload's ports with settings, for every workload that reads this document. Default empty.
	Ports []InboundPort `json:"ports,omitempty"`
	// Workloads are port settings for some workloads only: a proxy applies the entries whose namespace is its pod's
	// and whose selector matches its pod's labels (read from the downward API), in order, on top of Ports; for a
	// port several entries set, the first entry's settings win. Default empty.
	Workloads []InboundWorkload `json:"workloads,omitempty"`
}

// InboundWorkload holds inbound port settings for the pods a label selector picks in one namespace, as a
// MeshPolicy renders them.
type InboundWorkload struct {
	// Name identifies the entry in logs and metrics, e.g. "<namespace>/<MeshPolicy name>". Required, unique.
	Name string `json:"name"`
	// Namespace is the namespace of the pods the entry applies to. Required.
	Namespace string `json:"namespace"`
	// MatchLabels must all be labels of the pod. Default empty: every pod of the namespace.
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
	// MatchExpressions are label selector requirements (Kubernetes LabelSelector semantics: operators In, NotIn,
	// Exists, DoesNotExist) the pod's labels must all meet. Default empty.
	MatchExpressions []LabelRequirement `json:"matchExpressions,omitempty"`
	// Ports are the settings of the selected pods' ports, as in Inbound.Ports. Default empty.
	Ports []InboundPort `json:"ports,omitempty"`
	// DefaultPolicy applies to the selected pods' ports that Ports does not list. Default: Inbound.DefaultPolicy.
	DefaultPolicy string `json:"defaultPolicy,omitempty"`
	// Authorizations allow clients on the ports that Ports does not list; when non-empty, a client matching none is
	// denied. Default empty: DefaultPolicy decides.
	Authorizations []Authorization `json:"authorizations,omitempty"`
	// Routes narrow Authorizations to HTTP routes, on the ports that Ports does not list. Default empty.
	Routes []InboundRoute `json:"routes,omitempty"`
}

// LabelRequirement is one requirement of a label selector.
type LabelRequirement struct {
	// Key is the label key. Required.
	Key string `json:"key"`
	// Operator is In, NotIn, Exists or DoesNotExist. Required.
	Operator string `json:"operator"`
	// Values are the values In and NotIn compare with; empty for Exists and DoesNotExist.
	Values []string `json:"values,omitempty"`
}

// Default policies for inbound ports.
const (
	// PolicyAllUnauthenticated allows every client, meshed or not.
	PolicyAllUnauthenticated = "all-unauthenticated"
	// PolicyAllAuthenticated allows every client with a mesh identity.
	PolicyAllAuthenticated = "all-authenticated"
	// PolicyClusterAuthenticated allows clients with a mesh identity of this cluster's trust domain, and clients
	// without a mesh identity whose address is in the cluster networks (the proxy's --cluster-networks, by default
	// the RFC 1918 ranges and fc00::/7).
	PolicyClusterAuthenticated = "cluster-authenticated"
	// PolicyDeny allows no client (kubelet probes stay allowed).
	PolicyDeny = "deny"
)

// InboundPort is one port the workload serves.
type InboundPort struct {
	// Port is the container port (1-65535). Required, unique.
	Port int32 `json:"port"`
	// Name is the port's name, used in metrics. Default empty.
	Name string `json:"name,omitempty"`
	// Protocol is the port's protocol hint: "" (detect), "http1", "http2" or "opaque". Default "" (detect).
	Protocol string `json:"protocol,omitempty"`
	// DefaultPolicy overrides Inbound.DefaultPolicy for this port. Default: Inbound.DefaultPolicy.
	DefaultPolicy string `json:"defaultPolicy,omitempty"`
	// Authorizations allow clients on this port. A client that no authorization of the port, and no authorization
	// of a route the request matches, allows is judged by DefaultPolicy (deny: HTTP 403, or the TCP connection is
	// closed). Default empty.
	Authorizations []Authorization `json:"authorizations,omitempty"`
	// Routes allow clients on some HTTP requests of this port: a request is allowed when any route whose matches
	// it meets has an authorization that allows the client. Default empty.
	Routes []InboundRoute `json:"routes,omitempty"`
}

// InboundRoute is an HTTP route of an inbound port with its own authorizations.
type InboundRoute struct {
	// Name labels the route in metrics. Required, unique within the port.
	Name string `json:"name"`
	// Matches select requests as in Route.Matches. Default empty: every request.
	Matches []Match `json:"matches,omitempty"`
	// Authorizations allow clients on the requests the route matches, in addition to the port's. Default empty.
	Authorizations []Authorization `json:"authorizations,omitempty"`
}

// Authorization allows clients that satisfy any of its set fields.
type Authorization struct {
	// Name labels the authorization in metrics and logs. Required.
	Name string `json:"name"`
	// Identities are SPIFFE IDs allowed; one ending in "*" allows the IDs it prefixes
	// ("spiffe://cluster.local/ns/shop/*"), and "*" any authenticated client. Default empty.
	Identities []string `json:"identities,omitempty"`
	// ServiceAccounts are allowed ServiceAccounts (resolved to SPIFFE IDs with the trust domain). Default empty.
	ServiceAccounts []ServiceAccountRef `json:"serviceAccounts,omitempty"`
	// Namespaces allow any authenticated client from these namespaces. Default empty.
	Namespaces []string `json:"namespaces,omitempty"`
	// Unauthenticated allows clients whether or not they have a mesh identity (none is required), optionally only
	// from Networks. Default false.
	Unauthenticated bool `json:"unauthenticated,omitempty"`
	// Networks restricts this authorization to client addresses in these CIDRs. Default empty: any address.
	Networks []string `json:"networks,omitempty"`
}

// ServiceAccountRef names a ServiceAccount.
type ServiceAccountRef struct {
	// Name is the ServiceAccount name. Required.
	Name string `json:"name"`
	// Namespace is the ServiceAccount's namespace. Required.
	Namespace string `json:"namespace"`
}

// Duration is a time.Duration written as a Go duration string ("1s", "250ms") in JSON and YAML.
type Duration struct {
	// Duration is the parsed value.
	time.Duration
}

// D returns a pointer to a Duration of d, for building documents in code.
func D(d time.Duration) *Duration { return &Duration{Duration: d} }

// MarshalJSON writes the duration as a string such as "1.5s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"1s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}
