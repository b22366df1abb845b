//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/internal/wellknown"
	"github.com/trellis-mesh/trellis/test/e2e/framework"
)

// The mesh suite: an unchanged three-service application (test/apps/shop) is meshed by labelling its namespace and
// restarting its pods; its HTTP and gRPC calls then go through both proxies with mTLS, a Job completes, endpoint
// changes reach the proxies, a namespace outside the mesh stays untouched, and removing the label un-meshes.

// ensureMesh applies the sample Mesh (named default) and waits until it is Ready.
func ensureMesh(ctx context.Context, t *testing.T) {
	t.Helper()
	in := requireTrellis(t)
	if err := env.WaitDeploymentAvailable(ctx, in.Namespace, in.Deployment, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	objs, err := env.ApplyFile(ctx, "", filepath.Join(env.Root, "config", "samples", "mesh_v1alpha1_mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.WaitCondition(ctx, objs[0], "Ready", "True", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// proxyGet reads a path of a pod's proxy admin endpoint through the API server's pod proxy.
func proxyGet(ctx context.Context, ns, pod, path string) ([]byte, error) {
	return env.Clientset.CoreV1().Pods(ns).ProxyGet("http", pod, fmt.Sprint(wellknown.AdminPort), path, nil).DoRaw(ctx)
}

// metricSum adds the values of the series of metric whose labels include every wanted label.
func metricSum(text, metric string, want map[string]string) float64 {
	total := 0.0
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		labels, value, ok := strings.Cut(line[len(metric):], "} ")
		if !ok {
			continue
		}
		match := true
		for k, v := range want {
			match = match && strings.Contains(labels, fmt.Sprintf(`%s=%q`, k, v))
		}
		if match {
			if f, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
				total += f
			}
		}
	}
	return total
}

func podsOf(ctx context.Context, t *testing.T, ns, app string) []corev1.Pod {
	t.Helper()
	var pods corev1.PodList
	if err := env.Client.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{"app": app}); err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

func injected(p *corev1.Pod) bool {
	for _, c := range p.Spec.InitContainers {
		if c.Name == "trellis-proxy" {
			return true
		}
	}
	return false
}

// waitProxiesConverged waits until every running meshed pod of ns runs the configuration rendered into ns (what
// `trellis check` verifies), and logs how long that took.
func waitProxiesConverged(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	start := time.Now()
	if err := env.WaitFor(ctx, 3*time.Minute, "the proxies of "+ns+" to run the rendered configuration", func(ctx context.Context) (bool, error) {
		var cm corev1.ConfigMap
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: wellknown.ProxyConfigName}, &cm); err != nil {
			return false, nil
		}
		want := cm.Annotations["mesh.trellis.io/config-hash"]
		var pods corev1.PodList
		if err := env.Client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			return false, err
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if !injected(p) || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
				continue
			}
			raw, err := proxyGet(ctx, ns, p.Name, "/config")
			if err != nil {
				return false, nil
			}
			var st struct{ Hash string }
			if json.Unmarshal(raw, &st) != nil || st.Hash != want {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("the proxies of %s converged on the rendered configuration %v after the rollout", ns, time.Since(start).Round(100*time.Millisecond))
}

// rollout restarts the shop's Deployments and waits until they are available with only new pods.
func rollout(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	for _, d := range []string{"web", "catalog", "ratings"} {
		if _, err := env.Kubectl(ctx, "-n", ns, "rollout", "restart", "deploy/"+d); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"web", "catalog", "ratings"} {
		if _, err := env.Kubectl(ctx, "-n", ns, "rollout", "status", "deploy/"+d, "--timeout=180s"); err != nil {
			t.Fatal(err)
		}
	}
	// A rollout is done when the old pods are gone, not only when the new ones are ready: until then the Service
	// still sends connections to a pod that is stopping.
	if err := env.WaitFor(ctx, 2*time.Minute, "the old pods of "+ns+" to go", func(ctx context.Context) (bool, error) {
		var pods corev1.PodList
		if err := env.Client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
}

func deployShop(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	if _, err := env.ApplyFile(ctx, ns, filepath.Join(env.Root, "test", "apps", "shop", "shop.yaml")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"web", "catalog", "ratings"} {
		if err := env.WaitDeploymentAvailable(ctx, ns, d, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
}

// runLoad runs the shop's load Job in ns against its own web Service and waits for it to complete.
func runLoad(ctx context.Context, t *testing.T, ns, name string) {
	t.Helper()
	runLoadTo(ctx, t, ns, name, shopWebURL)
}

func TestShopIsMeshedWithMTLS(t *testing.T) {
	ctx := context.Background()
	ensureMesh(ctx, t)
	ns := env.Namespace(t, "shop", nil)
	plain := env.Namespace(t, "plain", nil)

	// Unlabelled, the application runs as is.
	deployShop(ctx, t, ns)
	for _, p := range podsOf(ctx, t, ns, "web") {
		if injected(&p) {
			t.Fatalf("pod %s was injected in an unlabelled namespace", p.Name)
		}
	}

	// Labelling the namespace and restarting the pods meshes them.
	if _, err := env.Kubectl(ctx, "label", "namespace", ns, "trellis.io/inject=enabled"); err != nil {
		t.Fatal(err)
	}
	rollout(ctx, t, ns)
	waitProxiesConverged(ctx, t, ns)
	for _, app := range []string{"web", "catalog", "ratings"} {
		for _, p := range podsOf(ctx, t, ns, app) {
			if !injected(&p) || p.Annotations[wellknown.AnnotationInjected] != "default" {
				t.Fatalf("pod %s is not meshed after the label and a restart", p.Name)
			}
		}
	}
	// A Job in the meshed namespace completes (the native sidecar does not keep it alive) and every request of it
	// succeeds through the mesh.
	runLoad(ctx, t, ns, "load-1")

	// Both proxies of each hop saw the traffic, over mTLS, with the workloads' identities.
	id := func(sa string) string { return fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa) }
	web := podsOf(ctx, t, ns, "web")[0]
	webMetrics, err := proxyGet(ctx, ns, web.Name, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for what, want := range map[string]map[string]string{
		"web -> catalog (HTTP)": {"direction": "outbound", "dst_service": "catalog", "tls": "true", "server_id": id("catalog")},
		"web -> ratings (gRPC)": {"direction": "outbound", "dst_service": "ratings", "tls": "true", "server_id": id("ratings")},
		"load Job -> web":       {"direction": "inbound", "tls": "true", "client_id": id("default")},
	} {
		if n := metricSum(string(webMetrics), "request_total", want); n < 200 {
			t.Errorf("%s: web's proxy counts %v mTLS requests, want at least 200 (%v)", what, n, want)
		}
	}
	inbound := 0.0
	for _, p := range podsOf(ctx, t, ns, "catalog") {
		m, err := proxyGet(ctx, ns, p.Name, "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		inbound += metricSum(string(m), "request_total", map[string]string{"direction": "inbound", "tls": "true", "client_id": id("web")})
	}
	if inbound < 200 {
		t.Errorf("catalog's proxies saw %v mTLS requests from web's identity, want at least 200", inbound)
	}

	// Prometheus scraped the proxies (they are annotated for it) and holds the same story.
	query := fmt.Sprintf(`sum(request_total{direction="inbound",tls="true",client_id=%q})`, id("web"))
	if err := env.WaitFor(ctx, time.Minute, "Prometheus to see the mTLS traffic", func(ctx context.Context) (bool, error) {
		samples, err := framework.PromQuery(ctx, query)
		return err == nil && len(samples) == 1 && samples[0].Value >= 200, nil
	}); err != nil {
		t.Error(err)
	}

	checkEndpointPropagation(ctx, t, ns)

	// A namespace outside the mesh is untouched: no injection, no Trellis objects.
	deployEcho(ctx, t, plain, "echo", 1)
	var pods corev1.PodList
	if err := env.Client.List(ctx, &pods, client.InNamespace(plain)); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if injected(&p) {
			t.Errorf("pod %s/%s outside the mesh was injected", plain, p.Name)
		}
	}
	if n := trellisConfigMaps(ctx, t, plain); n != 0 {
		t.Errorf("namespace %s outside the mesh holds %d Trellis ConfigMaps", plain, n)
	}

	// Removing the label and restarting un-meshes: plain pods, and the mesh's objects leave the namespace.
	if _, err := env.Kubectl(ctx, "label", "namespace", ns, "trellis.io/inject-"); err != nil {
		t.Fatal(err)
	}
	rollout(ctx, t, ns)
	for _, p := range podsOf(ctx, t, ns, "web") {
		if injected(&p) {
			t.Errorf("pod %s is still meshed after the label was removed", p.Name)
		}
	}
	if err := env.WaitFor(ctx, time.Minute, "the mesh's ConfigMaps to leave "+ns, func(ctx context.Context) (bool, error) {
		return trellisConfigMaps(ctx, t, ns) == 0, nil
	}); err != nil {
		t.Error(err)
	}
	runLoad(ctx, t, ns, "load-2")
}

func trellisConfigMaps(ctx context.Context, t *testing.T, ns string) int {
	t.Helper()
	var cms corev1.ConfigMapList
	if err := env.Client.List(ctx, &cms, client.InNamespace(ns), client.MatchingLabels{"app.kubernetes.io/managed-by": "trellis"}); err != nil {
		t.Fatal(err)
	}
	return len(cms.Items)
}

// catalogEndpoints returns how many catalog endpoints the rendered configuration of ns holds, and its hash.
func catalogEndpoints(ctx context.Context, t *testing.T, ns string) (int, string) {
	t.Helper()
	var cm corev1.ConfigMap
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: wellknown.ProxyConfigName}, &cm); err != nil {
		t.Fatal(err)
	}
	cfg, err := proxyconfig.Decode([]byte(cm.Data["config.json"]))
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := proxyconfig.Complete(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range loaded.Config.Services {
		if s.Namespace == ns && s.Name == "catalog" {
			return len(s.Backends[0].Endpoints), loaded.Hash
		}
	}
	return 0, loaded.Hash
}

// checkEndpointPropagation scales catalog up and down and measures how long until web's proxy runs a
// configuration with the new endpoint count (logged; the test bounds it generously, it does not time it).
func checkEndpointPropagation(ctx context.Context, t *testing.T, ns string) {
	t.Helper()
	web := podsOf(ctx, t, ns, "web")[0]
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
		err := env.WaitFor(ctx, 3*time.Minute, fmt.Sprintf("web's proxy to route to %d catalog endpoint(s)", replicas), func(ctx context.Context) (bool, error) {
			n, hash := catalogEndpoints(ctx, t, ns)
			if n != int(replicas) {
				return false, nil
			}
			if rendered == 0 {
				rendered = time.Since(start)
			}
			raw, err := proxyGet(ctx, ns, web.Name, "/config")
			if err != nil {
				return false, nil
			}
			var st struct{ Hash string }
			if json.Unmarshal(raw, &st) != nil || st.Hash != hash {
				return false, nil
			}
			running = time.Since(start)
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("catalog scaled to %d: configuration rendered after %v, web's proxy runs it after %v (EndpointSlice -> proxy)",
			replicas, rendered.Round(100*time.Millisecond), running.Round(100*time.Millisecond))
	}
}
