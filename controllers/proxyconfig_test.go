package controllers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/internal/render"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

func create(t *testing.T, c client.Client, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := c.Create(testCtx(t), o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

// service is a ClusterIP Service; the API server allocates its IP.
func service(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Ports: ports, Selector: map[string]string{"app": name}},
	}
}

func httpPort(port int32) corev1.ServicePort {
	return corev1.ServicePort{Name: "http", Port: port, TargetPort: intstr.FromInt32(8080), AppProtocol: ptr.To("http")}
}

// slice is an EndpointSlice of service svc with one endpoint per pod name; pods named "*-notready" are not ready.
func slice(ns, svc, portName string, port int32, pods map[string]string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for pod, ip := range pods {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(!strings.HasSuffix(pod, "-notready"))},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod},
		})
	}
	return es
}

func pod(ns, name, sa string, injected bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	}
	if injected {
		p.Annotations = map[string]string{wellknown.AnnotationInjected: "mesh"}
	}
	return p
}

// proxyConfigIn decodes the proxy configuration rendered into namespace ns, checking that the ConfigMap's hash
// annotation is the hash the proxy will compute.
func proxyConfigIn(t *testing.T, c client.Client, ns string) (*proxyconfig.Config, string, error) {
	t.Helper()
	cm := &corev1.ConfigMap{}
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: ns, Name: wellknown.ProxyConfigName}, cm); err != nil {
		return nil, "", err
	}
	cfg, err := proxyconfig.Decode([]byte(cm.Data["config.json"]))
	if err != nil {
		return nil, "", err
	}
	loaded, err := proxyconfig.Complete(cfg)
	if err != nil {
		return nil, "", err
	}
	if got := cm.Annotations[render.AnnotationConfigHash]; got != loaded.Hash {
		return nil, "", fmt.Errorf("annotation hash %s, content hash %s", got, loaded.Hash)
	}
	return loaded.Config, loaded.Hash, nil
}

func findService(cfg *proxyconfig.Config, name string, port int32) *proxyconfig.Service {
	for i := range cfg.Services {
		if cfg.Services[i].Name == name && cfg.Services[i].Port == port {
			return &cfg.Services[i]
		}
	}
	return nil
}

func TestProxyConfigFromServicesAndEndpoints(t *testing.T) {
	c := startManager(t)
	ns := "pc-app"
	namespace(t, c, ns, map[string]string{"pc": "yes"})
	namespace(t, c, "pc-outside", nil)
	web := service(ns, "web", httpPort(80))
	create(t, c,
		web,
		service(ns, "db", corev1.ServicePort{Name: "pg", Port: 5432, TargetPort: intstr.FromInt32(5432)}),
		service("pc-outside", "legacy", httpPort(80)),
		pod(ns, "web-1", "web-sa", true),
		pod(ns, "web-2-notready", "web-sa", true),
		pod(ns, "web-3", "web-sa", false),
		slice(ns, "web", "http", 8080, map[string]string{"web-1": "10.244.0.11", "web-2-notready": "10.244.0.12", "web-3": "10.244.0.13"}),
	)
	mesh := createMesh(t, c, "pc", map[string]string{"pc": "yes"})
	m := meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionConfigReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)

	var cfg *proxyconfig.Config
	var hash string
	eventually(t, "proxy config in the meshed namespace", func() (err error) {
		cfg, hash, err = proxyConfigIn(t, c, ns)
		return err
	})
	if m.Status.ConfigHash != hash {
		t.Errorf("status.configHash %s, ConfigMap %s", m.Status.ConfigHash, hash)
	}
	entry := findService(cfg, "web", 80)
	if entry == nil || entry.Protocol != proxyconfig.ProtocolHTTP1 || entry.ClusterIPs[0] != web.Spec.ClusterIP {
		t.Fatalf("web entry: %+v (cluster IP %s)", entry, web.Spec.ClusterIP)
	}
	eps := entry.Backends[0].Endpoints
	if len(eps) != 2 || eps[0].Address != "10.244.0.11:8080" || eps[1].Address != "10.244.0.13:8080" {
		t.Fatalf("web endpoints (ready only, target port): %+v", eps)
	}
	if eps[0].Identity != "spiffe://cluster.local/ns/pc-app/sa/web-sa" || eps[1].Identity != "" {
		t.Errorf("identities: meshed pod %q, unmeshed pod %q", eps[0].Identity, eps[1].Identity)
	}
	if db := findService(cfg, "db", 5432); db == nil || db.Protocol != proxyconfig.ProtocolOpaque {
		t.Errorf("db on 5432 should be opaque (a mesh default opaque port): %+v", db)
	}
	if findService(cfg, "legacy", 80) != nil {
		t.Error("a Service of a namespace outside the mesh is in the configuration")
	}
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: "pc-outside", Name: wellknown.ProxyConfigName}, &corev1.ConfigMap{}); err == nil {
		t.Error("a namespace outside the mesh got a proxy configuration")
	}

	// An endpoint change reaches the configuration without touching anything else.
	es := &discoveryv1.EndpointSlice{}
	if err := c.Get(testCtx(t), client.ObjectKey{Namespace: ns, Name: "web-x"}, es); err != nil {
		t.Fatal(err)
	}
	es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.244.0.14"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	start := time.Now()
	if err := c.Update(testCtx(t), es); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new endpoint in the configuration", func() error {
		cfg, _, err := proxyConfigIn(t, c, ns)
		if err != nil {
			return err
		}
		if n := len(findService(cfg, "web", 80).Backends[0].Endpoints); n != 3 {
			return fmt.Errorf("%d endpoints", n)
		}
		return nil
	})
	t.Logf("EndpointSlice change reached the ConfigMap in %v", time.Since(start).Round(time.Millisecond))
}

func TestPolicyAndSplitConditions(t *testing.T) {
	c := startManager(t)
	ns := "pol-app"
	namespace(t, c, ns, map[string]string{"pol": "yes"})
	namespace(t, c, "pol-outside", nil)
	create(t, c,
		service(ns, "web", httpPort(80)),
		service(ns, "web-v1", httpPort(80)),
		service(ns, "web-v2", httpPort(80)),
		slice(ns, "web-v1", "http", 8080, map[string]string{"v1": "10.244.1.1"}),
		slice(ns, "web-v2", "http", 8080, map[string]string{"v2": "10.244.1.2"}),
	)
	mesh := createMesh(t, c, "pol", map[string]string{"pol": "yes"})
	meshCondition(t, c, mesh.Name, meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)

	first := &meshv1alpha1.MeshPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "first"}, Spec: meshv1alpha1.MeshPolicySpec{
		TargetRef: &meshv1alpha1.PolicyTargetReference{Kind: "Service", Name: "web"},
		Timeouts:  &meshv1alpha1.Timeouts{Request: &metav1.Duration{Duration: 3 * time.Second}},
		Routes: []meshv1alpha1.Route{{Name: "items", Matches: []meshv1alpha1.HTTPMatch{{Path: &meshv1alpha1.PathMatch{Type: "PathPrefix", Value: "/items"}}},
			Timeouts: &meshv1alpha1.Timeouts{Request: &metav1.Duration{Duration: time.Second}}}},
	}}
	create(t, c, first)
	time.Sleep(1100 * time.Millisecond) // creation timestamps have one-second resolution
	second := &meshv1alpha1.MeshPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "second"}, Spec: meshv1alpha1.MeshPolicySpec{
		TargetRef: &meshv1alpha1.PolicyTargetReference{Kind: "Service", Name: "web"}, Ports: []int32{80},
	}}
	missing := &meshv1alpha1.MeshPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "missing"}, Spec: meshv1alpha1.MeshPolicySpec{
		TargetRef: &meshv1alpha1.PolicyTargetReference{Kind: "Service", Name: "nope"},
	}}
	badPort := &meshv1alpha1.MeshPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bad-port"}, Spec: meshv1alpha1.MeshPolicySpec{
		TargetRef: &meshv1alpha1.PolicyTargetReference{Kind: "Service", Name: "web-v1"}, Ports: []int32{81},
	}}
	stray := &meshv1alpha1.MeshPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "pol-outside", Name: "stray"}, Spec: meshv1alpha1.MeshPolicySpec{
		TargetRef: &meshv1alpha1.PolicyTargetReference{Kind: "Service", Name: "web"},
	}}
	split := &meshv1alpha1.TrafficSplit{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "canary"}, Spec: meshv1alpha1.TrafficSplitSpec{
		Service:  "web",
		Backends: []meshv1alpha1.TrafficSplitBackend{{Service: "web-v1", Weight: 90}, {Service: "web-v2", Weight: 10}, {Service: "web-v3", Weight: 5}},
	}}
	create(t, c, second, missing, badPort, stray, split)

	type want struct {
		name, typ string
		status    metav1.ConditionStatus
		reason    string
		message   string
	}
	check := func(obj client.Object, conds func() []metav1.Condition, w want) {
		t.Helper()
		eventually(t, fmt.Sprintf("%s %s=%s/%s", w.name, w.typ, w.status, w.reason), func() error {
			if err := c.Get(testCtx(t), client.ObjectKeyFromObject(obj), obj); err != nil {
				return err
			}
			cond := meta.FindStatusCondition(conds(), w.typ)
			if cond == nil || cond.Status != w.status || cond.Reason != w.reason || !strings.Contains(cond.Message, w.message) {
				return fmt.Errorf("got %+v", cond)
			}
			if cond.ObservedGeneration != obj.GetGeneration() {
				return fmt.Errorf("observedGeneration %d", cond.ObservedGeneration)
			}
			return nil
		})
	}
	pc := func(p *meshv1alpha1.MeshPolicy) func() []metav1.Condition {
		return func() []metav1.Condition { return p.Status.Conditions }
	}
	check(first, pc(first), want{"first", meshv1alpha1.ConditionAccepted, metav1.ConditionTrue, meshv1alpha1.ReasonAccepted, ""})
	check(second, pc(second), want{"second", meshv1alpha1.ConditionAccepted, metav1.ConditionFalse, meshv1alpha1.ReasonConflicted, "MeshPolicy pol-app/first"})
	check(missing, pc(missing), want{"missing", meshv1alpha1.ConditionResolvedRefs, metav1.ConditionFalse, meshv1alpha1.ReasonServiceNotFound, "Service nope not found"})
	check(badPort, pc(badPort), want{"bad-port", meshv1alpha1.ConditionResolvedRefs, metav1.ConditionFalse, meshv1alpha1.ReasonPortNotFound, "has no port 81"})
	check(stray, pc(stray), want{"stray", meshv1alpha1.ConditionAccepted, metav1.ConditionFalse, meshv1alpha1.ReasonNotMeshed, "label the namespace"})
	sc := func() []metav1.Condition { return split.Status.Conditions }
	check(split, sc, want{"canary", meshv1alpha1.ConditionAccepted, metav1.ConditionTrue, meshv1alpha1.ReasonAccepted, ""})
	check(split, sc, want{"canary", meshv1alpha1.ConditionResolvedRefs, metav1.ConditionFalse, meshv1alpha1.ReasonBackendNotFound, "web-v3 not found"})

	// The policy's routes and the split's weights are in the configuration.
	eventually(t, "routes and split in the configuration", func() error {
		cfg, _, err := proxyConfigIn(t, c, ns)
		if err != nil {
			return err
		}
		web := findService(cfg, "web", 80)
		if web == nil || len(web.Routes) != 2 || web.Routes[0].Name != "items" || web.Routes[0].Timeout.Duration != time.Second ||
			web.Routes[1].Name != "default" || web.Routes[1].Timeout.Duration != 3*time.Second {
			return fmt.Errorf("routes: %+v", web)
		}
		if len(web.Backends) != 3 || *web.Backends[0].Weight != 90 || *web.Backends[1].Weight != 10 || len(web.Backends[2].Endpoints) != 0 {
			return fmt.Errorf("backends: %+v", web.Backends)
		}
		if web.Backends[0].Endpoints[0].Address != "10.244.1.1:8080" {
			return fmt.Errorf("web-v1 endpoints: %+v", web.Backends[0].Endpoints)
		}
		return nil
	})

	// Fixing a reference resolves it.
	create(t, c, service(ns, "nope", httpPort(80)))
	check(missing, pc(missing), want{"missing", meshv1alpha1.ConditionResolvedRefs, metav1.ConditionTrue, meshv1alpha1.ReasonResolvedRefs, ""})
}
