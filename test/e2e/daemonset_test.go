//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/internal/wellknown"
	"github.com/trellis-mesh/trellis/test/e2e/framework"
)

// The DaemonSet-mode suite repeats the mesh suite's checks for HTTP with the sample Mesh switched to
// spec.proxy.mode DaemonSet (the identity service serves one Mesh, so the test switches it and restores Sidecar
// when it ends): the shop in one namespace and a load Job in another are meshed by labelling the namespaces and
// restarting; their requests go through the node proxy with mTLS between the pods' identities; the Job completes;
// scaling catalog changes the endpoints the node proxy uses; an unlabelled namespace stays untouched; removing the
// labels and restarting un-meshes.

const (
	nodeProxyNamespace = "trellis-system"
	nodeProxyName      = "default-node-proxy"
)

// setProxyMode sets the sample Mesh's spec.proxy.mode and waits until the Mesh is Ready for that generation.
func setProxyMode(ctx context.Context, t *testing.T, mode string) {
	t.Helper()
	patchMesh(ctx, t, fmt.Sprintf(`{"spec":{"proxy":{"mode":%q}}}`, mode), "the Mesh Ready in "+mode+" mode")
}

// patchMesh merge-patches the default Mesh and waits until it has reconciled the new generation and is Ready.
func patchMesh(ctx context.Context, t *testing.T, patch, what string) {
	t.Helper()
	m := &unstructured.Unstructured{}
	m.SetGroupVersionKind(schema.GroupVersionKind{Group: "mesh.trellis.io", Version: "v1alpha1", Kind: "Mesh"})
	m.SetName("default")
	if err := env.Client.Patch(ctx, m, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitFor(ctx, 4*time.Minute, what, func(ctx context.Context) (bool, error) {
		if err := env.Client.Get(ctx, client.ObjectKey{Name: "default"}, m); err != nil {
			return false, err
		}
		observed, _, _ := unstructured.NestedInt64(m.Object, "status", "observedGeneration")
		ready, ok := framework.Condition(m, "Ready")
		return observed == m.GetGeneration() && ok && ready["status"] == "True", nil
	}); err != nil {
		t.Fatalf("%v (conditions: %v)", err, framework.Conditions(m))
	}
}

// nodeProxyPod returns the node proxy's pod (the test ground has one node).
func nodeProxyPod(ctx context.Context, t *testing.T) string {
	t.Helper()
	var pods corev1.PodList
	if err := env.Client.List(ctx, &pods, client.InNamespace(nodeProxyNamespace),
		client.MatchingLabels{"app.kubernetes.io/name": "trellis-node-proxy"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			return p.Name
		}
	}
	t.Fatalf("no running node proxy pod among %d", len(pods.Items))
	return ""
}

// nodeServed reports whether a pod was injected for the node proxy: labelled, with trellis-init and trellis-await
// and no proxy container of its own.
func nodeServed(p *corev1.Pod) bool {
	names := map[string]bool{}
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		names[c.Name] = true
	}
	return p.Labels[wellknown.LabelProxy] == wellknown.ProxyNode && names["trellis-init"] && names["trellis-await"] &&
		!names["trellis-proxy"]
}

type nodePodStatus struct {
	Pod, Identity, State string
}

// nodeProxyPods reads the node proxy's GET /pods.
func nodeProxyPods(ctx context.Context, pod string) (map[string]nodePodStatus, error) {
	raw, err := proxyGet(ctx, nodeProxyNamespace, pod, "/pods")
	if err != nil {
		return nil, err
	}
	var list []nodePodStatus
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, err
	}
	out := map[string]nodePodStatus{}
	for _, p := range list {
		out[p.Pod] = p
	}
	return out, nil
}

// waitNodeProxyConverged waits until the node proxy runs the configuration rendered into ns and serves every
// running pod of ns, and logs how long that took.
func waitNodeProxyConverged(ctx context.Context, t *testing.T, np, ns string) {
	t.Helper()
	start := time.Now()
	if err := env.WaitFor(ctx, 3*time.Minute, "the node proxy to serve "+ns+" with the rendered configuration", func(ctx context.Context) (bool, error) {
		_, hash := catalogEndpoints(ctx, t, ns)
		raw, err := proxyGet(ctx, nodeProxyNamespace, np, "/config")
		if err != nil {
			return false, nil
		}
		var st struct{ Hash string }
		if json.Unmarshal(raw, &st) != nil || st.Hash != hash {
			return false, nil
		}
		served, err := nodeProxyPods(ctx, np)
		if err != nil {
			return false, nil
		}
		var pods corev1.PodList
		if err := env.Client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil && served[ns+"/"+p.Name].State != "serving" {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("the node proxy serves %s with the rendered configuration %v after the rollout", ns, time.Since(start).Round(100*time.Millisecond))
}

// shopWebURL is the URL test/apps/shop/load-job.yaml requests: web in the Job's own namespace.
const shopWebURL = "http://web:8080/"

// runLoadTo runs the shop's load Job in ns against url and waits for it to complete.
func runLoadTo(ctx context.Context, t *testing.T, ns, name, url string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(env.Root, "test", "apps", "shop", "load-job.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Replace(string(data), "name: shop-load", "name: "+name, 1)
	doc = strings.Replace(doc, fmt.Sprintf("%q", shopWebURL), fmt.Sprintf("%q", url), 1)
	if _, err := env.ApplyYAML(ctx, ns, doc); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitFor(ctx, 4*time.Minute, "Job "+name+" to complete", func(ctx context.Context) (bool, error) {
		var job batchv1.Job
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &job); err != nil {
			return false, err
		}
		if job.Status.Failed > 0 {
			return false, fmt.Errorf("job %s failed", name)
		}
		return job.Status.Succeeded > 0, nil
	}); err != nil {
		logs, _ := env.Kubectl(ctx, "-n", ns, "logs", "job/"+name, "--all-containers")
		t.Fatalf("%v\n%s", err, logs)
	}
}

func TestDaemonSetModeMeshesHTTPAcrossNamespaces(t *testing.T) {
	ctx := context.Background()
	ensureMesh(ctx, t)
	env.CollectOnFailure(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		setProxyMode(ctx, t, "Sidecar")
		if err := env.WaitFor(ctx, time.Minute, "the node proxy DaemonSet pruned", func(ctx context.Context) (bool, error) {
			err := env.Client.Get(ctx, client.ObjectKey{Namespace: nodeProxyNamespace, Name: nodeProxyName}, &appsv1.DaemonSet{})
			return client.IgnoreNotFound(err) == nil && err != nil, nil
		}); err != nil {
			t.Error(err)
		}
	})
	setProxyMode(ctx, t, "DaemonSet")
	var ds appsv1.DaemonSet
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: nodeProxyNamespace, Name: nodeProxyName}, &ds); err != nil {
		t.Fatal(err)
	}
	if ds.Status.NumberReady < 1 || ds.Status.NumberReady != ds.Status.DesiredNumberScheduled {
		t.Fatalf("node proxy DaemonSet %d/%d ready although the Mesh is Ready", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
	}
	np := nodeProxyPod(ctx, t)

	shop := env.Namespace(t, "ds-shop", nil)
	clients := env.Namespace(t, "ds-client", nil)
	plain := env.Namespace(t, "ds-plain", nil)

	// Unlabelled, the application runs as is.
	deployShop(ctx, t, shop)
	for _, p := range podsOf(ctx, t, shop, "web") {
		if nodeServed(&p) || injected(&p) {
			t.Fatalf("pod %s was injected in an unlabelled namespace", p.Name)
		}
	}

	// Labelling the namespaces and restarting the pods meshes them: for the node proxy, without a sidecar.
	for _, ns := range []string{shop, clients} {
		if _, err := env.Kubectl(ctx, "label", "namespace", ns, "trellis.io/inject=enabled"); err != nil {
			t.Fatal(err)
		}
	}
	rollout(ctx, t, shop)
	for _, app := range []string{"web", "catalog", "ratings"} {
		for _, p := range podsOf(ctx, t, shop, app) {
			if !nodeServed(&p) || p.Annotations[wellknown.AnnotationInjected] != "default" {
				t.Fatalf("pod %s is not meshed for the node proxy after the label and a restart: labels %v, init containers %d",
					p.Name, p.Labels, len(p.Spec.InitContainers))
			}
		}
	}
	waitNodeProxyConverged(ctx, t, np, shop)

	// A Job in the other namespace calls web across namespaces; it completes (trellis-await let it start once the
	// node proxy served it, and no sidecar keeps it alive) and every request succeeds through the mesh.
	webURL := fmt.Sprintf("http://web.%s.svc.cluster.local:8080/", shop)
	runLoadTo(ctx, t, clients, "load-1", webURL)

	id := func(ns, sa string) string { return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa) }
	raw, err := proxyGet(ctx, nodeProxyNamespace, np, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics := string(raw)
	web := podsOf(ctx, t, shop, "web")[0]
	for what, want := range map[string]map[string]string{
		"load Job -> web, at the Job's pod": {"workload_namespace": clients, "direction": "outbound", "dst_service": "web",
			"tls": "true", "server_id": id(shop, "web")},
		"load Job -> web, at web's pod": {"workload_namespace": shop, "workload_pod": web.Name, "direction": "inbound",
			"tls": "true", "client_id": id(clients, "default")},
		"web -> catalog (HTTP), at web's pod": {"workload_pod": web.Name, "direction": "outbound", "dst_service": "catalog",
			"tls": "true", "server_id": id(shop, "catalog")},
		"web -> ratings (gRPC), at web's pod": {"workload_pod": web.Name, "direction": "outbound", "dst_service": "ratings",
			"tls": "true", "server_id": id(shop, "ratings")},
	} {
		n := metricSum(metrics, "request_total", want)
		if n < 200 {
			t.Errorf("%s: the node proxy counts %v mTLS requests, want at least 200 (%v)", what, n, want)
		}
		t.Logf("%s: %v mTLS requests", what, n)
	}
	atCatalog := 0.0
	for _, p := range podsOf(ctx, t, shop, "catalog") {
		atCatalog += metricSum(metrics, "request_total", map[string]string{"workload_pod": p.Name, "direction": "inbound",
			"tls": "true", "client_id": id(shop, "web")})
	}
	if atCatalog < 200 {
		t.Errorf("web -> catalog, at catalog's pods: %v mTLS requests from web's identity, want at least 200", atCatalog)
	}
	t.Logf("web -> catalog, at catalog's pods: %v mTLS requests", atCatalog)
	served, err := nodeProxyPods(ctx, np)
	if err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"web", "catalog", "ratings"} {
		if metricSum(metrics, "identity_cert_expiration_timestamp_seconds", map[string]string{"workload_identity": id(shop, sa)}) == 0 {
			t.Errorf("the node proxy holds no certificate for %s", id(shop, sa))
		}
		p := podsOf(ctx, t, shop, sa)[0]
		if st := served[shop+"/"+p.Name]; st.State != "serving" || st.Identity != id(shop, sa) {
			t.Errorf("/pods: %s is %+v", p.Name, st)
		}
	}
	if t.Failed() {
		t.Logf("node proxy metrics:\n%s", metrics)
	}

	checkNodeEndpointPropagation(ctx, t, np, shop, clients, webURL)

	// A namespace outside the mesh is untouched: no injection, no Trellis objects, not served by the node proxy.
	deployEcho(ctx, t, plain, "echo", 1)
	var pods corev1.PodList
	if err := env.Client.List(ctx, &pods, client.InNamespace(plain)); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if nodeServed(&p) || injected(&p) || p.Annotations[wellknown.AnnotationInjected] != "" {
			t.Errorf("pod %s/%s outside the mesh was injected", plain, p.Name)
		}
	}
	if n := trellisConfigMaps(ctx, t, plain); n != 0 {
		t.Errorf("namespace %s outside the mesh holds %d Trellis ConfigMaps", plain, n)
	}
	if served, err := nodeProxyPods(ctx, np); err == nil {
		for k := range served {
			if strings.HasPrefix(k, plain+"/") {
				t.Errorf("the node proxy serves %s outside the mesh", k)
			}
		}
	}

	// Removing the labels and restarting un-meshes: plain pods, the mesh's objects leave, the node proxy lets go.
	for _, ns := range []string{shop, clients} {
		if _, err := env.Kubectl(ctx, "label", "namespace", ns, "trellis.io/inject-"); err != nil {
			t.Fatal(err)
		}
	}
	rollout(ctx, t, shop)
	for _, p := range podsOf(ctx, t, shop, "web") {
		if nodeServed(&p) || p.Annotations[wellknown.AnnotationInjected] != "" {
			t.Errorf("pod %s is still meshed after the label was removed", p.Name)
		}
	}
	if err := env.WaitFor(ctx, time.Minute, "the mesh's ConfigMaps to leave "+shop+" and the node proxy to let its pods go", func(ctx context.Context) (bool, error) {
		served, err := nodeProxyPods(ctx, np)
		if err != nil {
			return false, nil
		}
		for k := range served {
			if strings.HasPrefix(k, shop+"/") || strings.HasPrefix(k, clients+"/") {
				return false, nil
			}
		}
		return trellisConfigMaps(ctx, t, shop) == 0, nil
	}); err != nil {
		t.Error(err)
	}
	runLoadTo(ctx, t, clients, "load-3", webURL)
}

// checkNodeEndpointPropagation scales catalog up and down and measures how long until the node proxy runs a
// configuration with the new endpoint count; after scaling down to one, web's requests of a new load run all reach
// the remaining catalog pod, and every one succeeds.
func checkNodeEndpointPropagation(ctx context.Context, t *testing.T, np, ns, clients, webURL string) {
	t.Helper()
	for _, replicas := range []int32{3, 1} {
		start := time.Now()
		var d appsv1.Deployment
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "catalog"}, &d); err != nil {
			t.Fatal(err)
		}
		d.Spec.Replicas = &replicas
		if err := env.Client.Update(ctx, &d); err != nil {
			t.Fatal(err)
		}
		var rendered, running time.Duration
		if err := env.WaitFor(ctx, 3*time.Minute, fmt.Sprintf("the node proxy to route to %d catalog endpoint(s)", replicas), func(ctx context.Context) (bool, error) {
			n, hash := catalogEndpoints(ctx, t, ns)
			if n != int(replicas) {
				return false, nil
			}
			if rendered == 0 {
				rendered = time.Since(start)
			}
			raw, err := proxyGet(ctx, nodeProxyNamespace, np, "/config")
			if err != nil {
				return false, nil
			}
			var st struct{ Hash string }
			if json.Unmarshal(raw, &st) != nil || st.Hash != hash {
				return false, nil
			}
			running = time.Since(start)
			return true, nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("catalog scaled to %d: configuration rendered after %v, the node proxy runs it after %v (EndpointSlice -> node proxy)",
			replicas, rendered.Round(100*time.Millisecond), running.Round(100*time.Millisecond))
	}
	if err := env.WaitDeploymentAvailable(ctx, ns, "catalog", 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	remaining := podsOf(ctx, t, ns, "catalog")
	if len(remaining) != 1 {
		t.Fatalf("%d catalog pods after scaling to 1", len(remaining))
	}
	count := func() float64 {
		raw, err := proxyGet(ctx, nodeProxyNamespace, np, "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		return metricSum(string(raw), "request_total", map[string]string{"workload_pod": remaining[0].Name,
			"direction": "inbound", "tls": "true"})
	}
	before := count()
	runLoadTo(ctx, t, clients, "load-2", webURL)
	if got := count() - before; got < 200 {
		t.Errorf("after scaling catalog to 1, its remaining pod %s received %v of web's 200 requests", remaining[0].Name, got)
	} else {
		t.Logf("after scaling catalog to 1, its remaining pod %s received %v mTLS requests of the next load run", remaining[0].Name, got)
	}
}
