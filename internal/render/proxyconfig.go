package render

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/internal/spiffe"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// PodInfo is what the proxy configuration needs to know of a pod behind an endpoint.
type PodInfo struct {
	// ServiceAccount is the pod's ServiceAccount name.
	ServiceAccount string
	// Meshed says whether the pod runs behind a Trellis proxy, so that its endpoint speaks mTLS.
	Meshed bool
}

// ProxySnapshot is everything the proxy configuration of a mesh is rendered from.
type ProxySnapshot struct {
	// Mesh is the mesh, with API defaults applied.
	Mesh *meshv1alpha1.Mesh
	// ClusterDomain is the cluster's DNS domain.
	ClusterDomain string
	// Services are the Services of the meshed namespaces.
	Services []corev1.Service
	// EndpointSlices are the EndpointSlices of those Services.
	EndpointSlices []discoveryv1.EndpointSlice
	// Pods describes the pods behind endpoints, by namespace/name.
	Pods map[types.NamespacedName]PodInfo
	// Policies and Splits are the MeshPolicies and TrafficSplits in force (accepted).
	Policies []meshv1alpha1.MeshPolicy
	Splits   []meshv1alpha1.TrafficSplit
	// HTTPRoutes are the Gateway API HTTPRoutes with a Service parent (GAMMA) in force.
	HTTPRoutes []gatewayv1.HTTPRoute
}

// ProxyConfig builds the proxy configuration document of a mesh: one entry per TCP port of every ClusterIP Service
// in a meshed namespace, with its protocol, backends (TrafficSplit legs or the Service itself), endpoints with
// their SPIFFE identities, and routes from MeshPolicies; the MeshPolicies' authorization as per-workload inbound
// settings; plus the mesh's traffic defaults and default inbound policy. The result is deterministic: the same snapshot renders the same bytes. Version is left empty (see
// ProxyConfigMaps).
func ProxyConfig(s *ProxySnapshot) *proxyconfig.Config {
	m := s.Mesh
	cfg := &proxyconfig.Config{
		APIVersion:    proxyconfig.APIVersion,
		ClusterDomain: s.ClusterDomain,
		Defaults:      trafficDefaults(&m.Spec.Traffic),
		Inbound:       &proxyconfig.Inbound{DefaultPolicy: inboundPolicy(m.Spec.DefaultPolicy)},
		OpaquePorts:   append([]int32(nil), m.Spec.Proxy.OpaquePorts...),
	}
	sort.Slice(cfg.OpaquePorts, func(i, j int) bool { return cfg.OpaquePorts[i] < cfg.OpaquePorts[j] })
	idx := newEndpointIndex(s)
	splits := map[types.NamespacedName]*meshv1alpha1.TrafficSplit{}
	for i := range s.Splits {
		splits[types.NamespacedName{Namespace: s.Splits[i].Namespace, Name: s.Splits[i].Spec.Service}] = &s.Splits[i]
	}
	for _, svc := range sortedServices(s.Services) {
		ips := clusterIPs(svc)
		if len(ips) == 0 {
			continue
		}
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		for _, port := range svc.Spec.Ports {
			if port.Protocol != "" && port.Protocol != corev1.ProtocolTCP {
				continue
			}
			entry := proxyconfig.Service{
				Name: svc.Name, Namespace: svc.Namespace, ClusterIPs: ips, Port: port.Port,
				Protocol: protocolHint(svc, port, m.Spec.Proxy.OpaquePorts),
			}
			policy := policyFor(s.Policies, key, port.Port)
			applyServicePolicy(&entry, policy)
			split := splits[key]
			entry.Backends = backendsFor(idx, svc, port, split, m.Spec.TrustDomain)
			if attached := attachedRoutes(s.HTTPRoutes, svc, port.Port); len(attached) > 0 {
				var timeout *proxyconfig.Duration
				var retry *proxyconfig.RetryPolicy
				if policy != nil {
					timeout, retry = requestTimeout(policy.Spec.Timeouts), retryPolicy(policy.Spec.Retries)
				}
				entry.Routes, entry.Backends = routesFromHTTPRoutes(idx, svc, port, attached, entry.Backends, m.Spec.TrustDomain, timeout, retry)
				// GAMMA: the HTTPRoutes decide every HTTP request to the port; one that no rule matches gets 404.
				// A MeshPolicy's routes do not apply here (EvaluatePolicies says so in the policy's status).
				entry.Routes = append(entry.Routes, unmatchedRoute(svc, port.Port))
			} else {
				entry.Routes = append(entry.Routes, routesFor(policy, split)...)
			}
			cfg.Services = append(cfg.Services, entry)
		}
	}
	cfg.Inbound.Workloads = inboundWorkloads(s, idx)
	return cfg
}

func trafficDefaults(t *meshv1alpha1.TrafficDefaults) *proxyconfig.Defaults {
	d := &proxyconfig.Defaults{}
	if t.RequestTimeout != nil {
		d.RequestTimeout = proxyconfig.D(t.RequestTimeout.Duration)
	}
	b := &proxyconfig.RetryBudget{}
	if r, err := strconv.ParseFloat(t.RetryBudget.Ratio, 64); err == nil {
		b.Ratio = ptr.To(r)
	}
	if t.RetryBudget.MinPerSecond != 0 {
		b.MinRetriesPerSecond = ptr.To(t.RetryBudget.MinPerSecond)
	}
	b.TTL = duration(t.RetryBudget.TTL)
	d.RetryBudget = b
	fa := &proxyconfig.FailureAccrual{MinBackoff: duration(t.FailureAccrual.MinBackoff), MaxBackoff: duration(t.FailureAccrual.MaxBackoff)}
	if t.FailureAccrual.ConsecutiveFailures != 0 {
		fa.ConsecutiveFailures = ptr.To(t.FailureAccrual.ConsecutiveFailures)
	}
	d.FailureAccrual = fa
	return d
}

func duration(d *metav1.Duration) *proxyconfig.Duration {
	if d == nil {
		return nil
	}
	return proxyconfig.D(d.Duration)
}

func inboundPolicy(p meshv1alpha1.DefaultPolicy) string {
	switch p {
	case meshv1alpha1.DefaultPolicyAllAuthenticated:
		return proxyconfig.PolicyAllAuthenticated
	case meshv1alpha1.DefaultPolicyClusterAuthenticated:
		return proxyconfig.PolicyClusterAuthenticated
	case meshv1alpha1.DefaultPolicyDeny:
		return proxyconfig.PolicyDeny
	default:
		return proxyconfig.PolicyAllUnauthenticated
	}
}

func sortedServices(services []corev1.Service) []*corev1.Service {
	out := make([]*corev1.Service, 0, len(services))
	for i := range services {
		out = append(out, &services[i])
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// clusterIPs returns the Service's cluster IPs, or nothing for headless and ExternalName Services.
func clusterIPs(svc *corev1.Service) []string {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []string
	for _, ip := range ips {
		if net.ParseIP(ip) != nil {
			out = append(out, ip)
		}
	}
	return out
}

// protocolHint maps a Service port to the proxy's protocol hint: opaque for the mesh's and the Service's opaque
// ports and for appProtocol trellis.io/opaque, http2 for h2c and gRPC, http1 for http; otherwise detection.
func protocolHint(svc *corev1.Service, port corev1.ServicePort, meshOpaque []int32) string {
	if containsPort(meshOpaque, port.Port) || containsPort(parsePorts(svc.Annotations[wellknown.AnnotationOpaquePorts]), port.Port) {
		return proxyconfig.ProtocolOpaque
	}
	switch strings.ToLower(ptr.Deref(port.AppProtocol, "")) {
	case "trellis.io/opaque", "tcp":
		return proxyconfig.ProtocolOpaque
	case "kubernetes.io/h2c", "h2c", "grpc", "http2":
		return proxyconfig.ProtocolHTTP2
	case "http", "http1", "kubernetes.io/ws":
		return proxyconfig.ProtocolHTTP1
	}
	return proxyconfig.ProtocolDetect
}

// parsePorts reads a comma-separated list of ports and port ranges ("80,8080-8090"); malformed entries are skipped.
func parsePorts(s string) []int32 {
	var out []int32
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseInt(lo, 10, 32)
		if err != nil || a < 1 || a > 65535 {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.ParseInt(hi, 10, 32); err != nil || b < a || b > 65535 || b-a > 1000 {
				continue
			}
		}
		for p := a; p <= b; p++ {
			out = append(out, int32(p))
		}
	}
	return out
}

func containsPort(ports []int32, p int32) bool {
	for _, x := range ports {
		if x == p {
			return true
		}
	}
	return false
}

func policyFor(policies []meshv1alpha1.MeshPolicy, svc types.NamespacedName, port int32) *meshv1alpha1.MeshPolicy {
	for i := range policies {
		p := &policies[i]
		if p.Namespace != svc.Namespace || p.Spec.TargetRef == nil || p.Spec.TargetRef.Name != svc.Name {
			continue
		}
		if len(p.Spec.Ports) == 0 || containsPort(p.Spec.Ports, port) {
			return p
		}
	}
	return nil
}

// backendsFor returns the Service port's backends: the TrafficSplit's legs when a split applies (with the root
// Service itself as a zero-weight leg that serves requests the split's matches leave out), else the Service alone.
func backendsFor(idx *endpointIndex, svc *corev1.Service, port corev1.ServicePort, split *meshv1alpha1.TrafficSplit, trustDomain string) []proxyconfig.Backend {
	self := proxyconfig.Backend{Name: svc.Name, Namespace: svc.Namespace, Endpoints: idx.endpoints(svc.Namespace, svc.Name, port.Port, trustDomain)}
	if split == nil {
		return []proxyconfig.Backend{self}
	}
	var out []proxyconfig.Backend
	if len(split.Spec.Matches) > 0 {
		self.Weight = ptr.To(int32(1))
		out = append(out, self)
	}
	for _, b := range split.Spec.Backends {
		leg := proxyconfig.Backend{Name: b.Service, Namespace: svc.Namespace, Endpoints: idx.endpoints(svc.Namespace, b.Service, port.Port, trustDomain)}
		leg.Unresolved = idx.unresolved(svc.Namespace, b.Service, port.Port, split.Name)
		leg.Weight = ptr.To(b.Weight)
		if len(split.Spec.Matches) > 0 {
			leg.Weight = ptr.To(int32(0))
		}
		out = append(out, leg)
	}
	return out
}

// routesFor renders the split's matching route (first), the policy's routes, and a catch-all "default" route that
// carries the policy's own timeout and retries.
func routesFor(policy *meshv1alpha1.MeshPolicy, split *meshv1alpha1.TrafficSplit) []proxyconfig.Route {
	var routes []proxyconfig.Route
	var timeouts *meshv1alpha1.Timeouts
	var retries *meshv1alpha1.Retries
	if policy != nil {
		timeouts, retries = policy.Spec.Timeouts, policy.Spec.Retries
	}
	if split != nil && len(split.Spec.Matches) > 0 {
		r := proxyconfig.Route{Name: "split-" + split.Name, Matches: matches(split.Spec.Matches), Timeout: requestTimeout(timeouts), Retry: retryPolicy(retries)}
		for _, b := range split.Spec.Backends {
			r.Backends = append(r.Backends, proxyconfig.BackendRef{Name: b.Service, Weight: ptr.To(b.Weight)})
		}
		routes = append(routes, r)
	}
	if policy == nil {
		return routes
	}
	for _, pr := range policy.Spec.Routes {
		t, rt := timeouts, retries
		if pr.Timeouts != nil {
			t = pr.Timeouts
		}
		if pr.Retries != nil {
			rt = pr.Retries
		}
		routes = append(routes, proxyconfig.Route{Name: pr.Name, Matches: matches(pr.Matches), Timeout: requestTimeout(t), Retry: retryPolicy(rt)})
	}
	if timeouts != nil || retries != nil {
		routes = append(routes, proxyconfig.Route{Name: "default", Timeout: requestTimeout(timeouts), Retry: retryPolicy(retries)})
	}
	return routes
}

// applyServicePolicy sets a service's load balancer, failure accrual and circuit-breaking limits from the
// MeshPolicy that targets it.
func applyServicePolicy(entry *proxyconfig.Service, policy *meshv1alpha1.MeshPolicy) {
	if policy == nil {
		return
	}
	switch policy.Spec.LoadBalancer {
	case meshv1alpha1.LoadBalancerPeakEWMA:
		entry.LoadBalancer = proxyconfig.LoadBalancerEWMA
	case meshv1alpha1.LoadBalancerRoundRobin:
		entry.LoadBalancer = proxyconfig.LoadBalancerRoundRobin
	case meshv1alpha1.LoadBalancerLeastRequest:
		entry.LoadBalancer = proxyconfig.LoadBalancerLeastRequest
	}
	cb := policy.Spec.CircuitBreaking
	if cb == nil {
		return
	}
	entry.MaxConnections, entry.MaxRequests, entry.MaxPendingRequests = cb.MaxConnections, cb.MaxRequests, cb.MaxPendingRequests
	if cb.ConsecutiveFailures != nil || cb.MinEjection != nil || cb.MaxEjection != nil {
		entry.FailureAccrual = &proxyconfig.FailureAccrual{
			ConsecutiveFailures: cb.ConsecutiveFailures, MinBackoff: duration(cb.MinEjection), MaxBackoff: duration(cb.MaxEjection),
		}
	}
}

func requestTimeout(t *meshv1alpha1.Timeouts) *proxyconfig.Duration {
	if t == nil {
		return nil
	}
	return duration(t.Request)
}

// retryPolicy maps a MeshPolicy's retries to the proxy's. Connect failures and refused streams are always
// retryable; HTTP outcomes and gRPC codes pass through by name, retriable status codes as numbers.
func retryPolicy(r *meshv1alpha1.Retries) *proxyconfig.RetryPolicy {
	if r == nil {
		return nil
	}
	on := []string{"connect-failure", "refused-stream"}
	for _, c := range r.RetryOn {
		if c == "retriable-status-codes" {
			for _, code := range r.StatusCodes {
				on = append(on, strconv.Itoa(int(code)))
			}
			continue
		}
		on = append(on, string(c))
	}
	p := &proxyconfig.RetryPolicy{Attempts: ptr.To(r.Attempts), RetryOn: on, NonIdempotent: r.NonIdempotent}
	if r.PerTryTimeout != nil {
		p.PerTryTimeout = proxyconfig.D(r.PerTryTimeout.Duration)
	}
	if r.MaxBodyBytes != 0 {
		p.MaxBodyBytes = ptr.To(r.MaxBodyBytes)
	}
	if b := r.Backoff; b != nil {
		p.Backoff = &proxyconfig.RetryBackoff{Base: duration(b.Base), Max: duration(b.Max)}
	}
	return p
}

func matches(in []meshv1alpha1.HTTPMatch) []proxyconfig.Match {
	out := make([]proxyconfig.Match, 0, len(in))
	for _, m := range in {
		pm := proxyconfig.Match{Method: string(m.Method)}
		if m.Path != nil {
			pm.Path = &proxyconfig.PathMatch{Type: string(m.Path.Type), Value: m.Path.Value}
		}
		for _, h := range m.Headers {
			pm.Headers = append(pm.Headers, proxyconfig.HeaderMatch{Name: h.Name, Type: string(h.Type), Value: h.Value})
		}
		out = append(out, pm)
	}
	return out
}

// endpointIndex finds the ready endpoints of a Service port.
type endpointIndex struct {
	slices map[types.NamespacedName][]*discoveryv1.EndpointSlice
	svcs   map[types.NamespacedName]*corev1.Service
	pods   map[types.NamespacedName]PodInfo
}

func newEndpointIndex(s *ProxySnapshot) *endpointIndex {
	idx := &endpointIndex{
		slices: map[types.NamespacedName][]*discoveryv1.EndpointSlice{},
		svcs:   map[types.NamespacedName]*corev1.Service{},
		pods:   s.Pods,
	}
	for i := range s.Services {
		idx.svcs[types.NamespacedName{Namespace: s.Services[i].Namespace, Name: s.Services[i].Name}] = &s.Services[i]
	}
	for i := range s.EndpointSlices {
		es := &s.EndpointSlices[i]
		svc := es.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		key := types.NamespacedName{Namespace: es.Namespace, Name: svc}
		idx.slices[key] = append(idx.slices[key], es)
	}
	for _, list := range idx.slices {
		sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	}
	return idx
}

// unresolved says why a TrafficSplit backend cannot serve a port ("" when it can).
func (idx *endpointIndex) unresolved(ns, name string, port int32, split string) string {
	svc := idx.svcs[types.NamespacedName{Namespace: ns, Name: name}]
	if svc == nil {
		return fmt.Sprintf("TrafficSplit %s/%s: backend Service %s not found", ns, split, name)
	}
	for _, p := range svc.Spec.Ports {
		if p.Port == port {
			return ""
		}
	}
	return fmt.Sprintf("TrafficSplit %s/%s: backend Service %s has no port %d", ns, split, name, port)
}

// endpoints returns the ready endpoints of Service ns/name for its port servicePort, in the Service's primary IP
// family, sorted by address, each with the SPIFFE identity of a meshed pod.
func (idx *endpointIndex) endpoints(ns, name string, servicePort int32, trustDomain string) []proxyconfig.Endpoint {
	key := types.NamespacedName{Namespace: ns, Name: name}
	svc := idx.svcs[key]
	if svc == nil {
		return nil
	}
	var portName string
	found := false
	for _, p := range svc.Spec.Ports {
		if p.Port == servicePort {
			portName, found = p.Name, true
		}
	}
	if !found {
		return nil
	}
	family := discoveryv1.AddressTypeIPv4
	if len(svc.Spec.IPFamilies) > 0 && svc.Spec.IPFamilies[0] == corev1.IPv6Protocol {
		family = discoveryv1.AddressTypeIPv6
	}
	seen := map[string]bool{}
	var out []proxyconfig.Endpoint
	for _, es := range idx.slices[key] {
		if es.AddressType != family {
			continue
		}
		var target int32
		for _, p := range es.Ports {
			if ptr.Deref(p.Name, "") == portName && p.Port != nil {
				target = *p.Port
			}
		}
		if target == 0 {
			continue
		}
		for _, ep := range es.Endpoints {
			if !ptr.Deref(ep.Conditions.Ready, true) || len(ep.Addresses) == 0 {
				continue
			}
			addr := net.JoinHostPort(ep.Addresses[0], strconv.Itoa(int(target)))
			if seen[addr] {
				continue
			}
			seen[addr] = true
			e := proxyconfig.Endpoint{Address: addr, Zone: ptr.Deref(ep.Zone, "")}
			if ref := ep.TargetRef; ref != nil && ref.Kind == "Pod" {
				pod := idx.pods[types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}]
				if id, err := spiffe.FromServiceAccount(trustDomain, ref.Namespace, pod.ServiceAccount); err == nil && pod.Meshed {
					e.Identity = id.String()
				}
			}
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// ConfigShardLimit is the most bytes of configuration the manager puts in one ConfigMap key. ConfigMaps hold at
// most 1 MiB in all; the margin leaves room for the object's metadata.
const ConfigShardLimit = 900 << 10

// ProxyConfigMaps renders the ConfigMaps of one namespace from the data EncodeProxyConfig returned: the first is
// wellknown.ProxyConfigName, the next ones carry a -1, -2, ... suffix. Each carries the configuration's hash in
// AnnotationConfigHash.
func ProxyConfigMaps(mesh *meshv1alpha1.Mesh, namespace string, shards []map[string]string, hash string) []*corev1.ConfigMap {
	out := make([]*corev1.ConfigMap, 0, len(shards))
	for i, data := range shards {
		name := wellknown.ProxyConfigName
		if i > 0 {
			name = fmt.Sprintf("%s-%d", wellknown.ProxyConfigName, i)
		}
		cm := &corev1.ConfigMap{TypeMeta: configMapType, ObjectMeta: meta(mesh, namespace, name, ComponentProxyConfig), Data: data}
		cm.Annotations = map[string]string{AnnotationConfigHash: hash}
		out = append(out, cm)
	}
	return out
}

// ComponentProxyConfig labels proxy configuration ConfigMaps.
const ComponentProxyConfig = "proxy-config"

// EncodeProxyConfig sets the configuration's version, completes it, and splits its canonical JSON into the data
// of one or more ConfigMaps. The version is derived from the content, so every shard of one rendering carries the
// same value and an unchanged configuration renders unchanged ConfigMaps.
func EncodeProxyConfig(cfg *proxyconfig.Config) (shards []map[string]string, hash string, err error) {
	cfg.Version = ""
	draft, err := proxyconfig.Canonical(cfg)
	if err != nil {
		return nil, "", err
	}
	cfg.Version = contentVersion(draft)
	loaded, err := proxyconfig.Complete(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("the rendered proxy configuration is invalid: %w", err)
	}
	whole, err := proxyconfig.Canonical(cfg)
	if err != nil {
		return nil, "", err
	}
	if len(whole) <= ConfigShardLimit {
		return []map[string]string{{proxyconfig.DocumentBase + ".json": string(whole)}}, loaded.Hash, nil
	}
	docs, err := shardServices(cfg)
	if err != nil {
		return nil, "", err
	}
	// Pack shard documents into ConfigMaps, each under the limit.
	current := map[string]string{}
	size := 0
	for i, doc := range docs {
		if size+len(doc) > ConfigShardLimit && len(current) > 0 {
			shards = append(shards, current)
			current, size = map[string]string{}, 0
		}
		current[fmt.Sprintf("%s%03d.json", proxyconfig.ShardPrefix, i)] = doc
		size += len(doc)
	}
	shards = append(shards, current)
	if len(shards) > wellknown.MaxProxyConfigMaps {
		return nil, "", fmt.Errorf("the proxy configuration needs %d ConfigMaps of %d KiB, more than the %d a namespace may hold: "+
			"reduce the Services in the mesh's namespaces or split them into several meshes", len(shards), ConfigShardLimit>>10, wellknown.MaxProxyConfigMaps)
	}
	return shards, loaded.Hash, nil
}

// shardServices splits a configuration into documents under ConfigShardLimit: the first carries the defaults,
// inbound policy and opaque ports, and every document carries a run of services. Sizes are summed from each
// service's own encoding, so splitting is linear in the configuration's size.
func shardServices(cfg *proxyconfig.Config) ([]string, error) {
	head := *cfg
	head.Services = nil
	headSize, err := encodedSize(&head)
	if err != nil {
		return nil, err
	}
	var docs []string
	shard := head
	size := headSize
	for _, svc := range cfg.Services {
		svcSize, err := encodedSize(svc)
		if err != nil {
			return nil, err
		}
		if headSize+svcSize+32 > ConfigShardLimit {
			return nil, fmt.Errorf("the configuration of Service %s/%s port %d alone is larger than %d KiB", svc.Namespace, svc.Name, svc.Port, ConfigShardLimit>>10)
		}
		if size+svcSize+32 > ConfigShardLimit && len(shard.Services) > 0 {
			data, err := proxyconfig.Canonical(&shard)
			if err != nil {
				return nil, err
			}
			docs = append(docs, string(data))
			shard = proxyconfig.Config{APIVersion: cfg.APIVersion, Version: cfg.Version}
			size, _ = encodedSize(&shard)
		}
		shard.Services = append(shard.Services, svc)
		size += svcSize + 1
	}
	data, err := proxyconfig.Canonical(&shard)
	if err != nil {
		return nil, err
	}
	return append(docs, string(data)), nil
}

func encodedSize(v any) (int, error) {
	data, err := json.Marshal(v)
	return len(data), err
}

// contentVersion names a rendering by its content: a timestamp-free, stable version string.
func contentVersion(canonical []byte) string {
	h := fnv.New64a()
	_, _ = h.Write(canonical)
	return fmt.Sprintf("r-%016x", h.Sum64())
}

// ComponentProxyRBAC labels the Role and RoleBinding that let a namespace's proxies read their configuration.
const ComponentProxyRBAC = "proxy-rbac"

// ProxyConfigReader returns a Role that may read (get, list, watch) only the proxy configuration ConfigMaps of the
// namespace, and a RoleBinding granting it to every ServiceAccount of the namespace. Proxies watch their
// ConfigMaps through the API with it, which reaches them in about a second, where the kubelet's ConfigMap volume
// sync takes up to a minute or more; the mounted volume stays as the fallback.
func ProxyConfigReader(mesh *meshv1alpha1.Mesh, namespace string) []client.Object {
	names := make([]string, 0, wellknown.MaxProxyConfigMaps)
	for i := 0; i < wellknown.MaxProxyConfigMaps; i++ {
		name := wellknown.ProxyConfigName
		if i > 0 {
			name = fmt.Sprintf("%s-%d", wellknown.ProxyConfigName, i)
		}
		names = append(names, name)
	}
	role := &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "Role"},
		ObjectMeta: meta(mesh, namespace, wellknown.ProxyConfigReaderName, ComponentProxyRBAC),
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: names,
			Verbs: []string{"get", "list", "watch"},
		}},
	}
	binding := &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "RoleBinding"},
		ObjectMeta: meta(mesh, namespace, wellknown.ProxyConfigReaderName, ComponentProxyRBAC),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: wellknown.ProxyConfigReaderName},
		Subjects: []rbacv1.Subject{{
			Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "system:serviceaccounts:" + namespace,
		}},
	}
	return []client.Object{role, binding}
}
