//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
)

// The traffic suite: TrafficSplit weights and header matches, and the authorization matrix, on the cluster.

// echoWorkload is a Deployment of the echo app with a ServiceAccount and labels; ports lists the ports it serves
// (each with its own echo process). annotations go on the pod template.
func echoWorkload(name, sa string, labels map[string]string, ports []int, annotations map[string]string) string {
	var lbl, ann, containers strings.Builder
	for k, v := range labels {
		fmt.Fprintf(&lbl, "%s: %q, ", k, v)
	}
	for k, v := range annotations {
		fmt.Fprintf(&ann, "%s: %q, ", k, v)
	}
	for i, p := range ports {
		fmt.Fprintf(&containers, `
      - name: echo%d
        image: %s
        imagePullPolicy: IfNotPresent
        args: [-listen, ":%d"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        ports: [{containerPort: %d}]`, i, echoImage, p, p)
		// Only the first port is probed: the probe of an opaque port would open that whole port to every client.
		if i == 0 {
			fmt.Fprintf(&containers, `
        readinessProbe: {httpGet: {path: /healthz, port: %d}, periodSeconds: 2}`, p)
		}
	}
	return fmt.Sprintf(`
apiVersion: v1
kind: ServiceAccount
metadata: {name: %[2]s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {%[3]s}}
  template:
    metadata:
      labels: {%[3]s}
      annotations: {%[4]s}
    spec:
      serviceAccountName: %[2]s
      containers:%[5]s
`, name, sa, strings.TrimSuffix(lbl.String(), ", "), strings.TrimSuffix(ann.String(), ", "), containers.String())
}

// countFrom runs `echo count` in the first pod of Deployment deploy in ns and returns its tally.
func countFrom(ctx context.Context, t *testing.T, ns, app, url string, n int, header string) echoCounts {
	t.Helper()
	pod := podsOf(ctx, t, ns, app)[0]
	args := []string{"/echo", "count", url, "-n", fmt.Sprint(n)}
	if header != "" {
		args = append(args, "-H", header)
	}
	out, err := env.Exec(ctx, ns, pod.Name, pod.Spec.Containers[0].Name, args...)
	if err != nil {
		t.Fatalf("echo count in %s/%s: %v\n%s", ns, pod.Name, err, out)
	}
	var c echoCounts
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatalf("echo count printed %q: %v", out, err)
	}
	return c
}

// echoCounts is what `echo count` prints.
type echoCounts struct {
	Backends map[string]int `json:"backends"`
	Statuses map[int]int    `json:"statuses"`
	Errors   int            `json:"errors"`
}

func TestTrafficSplitOnCluster(t *testing.T) {
	ctx := context.Background()
	ensureMesh(ctx, t)
	ns := env.Namespace(t, "split", map[string]string{"trellis.io/inject": "enabled"})
	var manifests strings.Builder
	manifests.WriteString(echoWorkload("web-v1", "web", map[string]string{"app": "web", "version": "v1"}, []int{8080}, nil))
	manifests.WriteString("---" + echoWorkload("web-v2", "web", map[string]string{"app": "web", "version": "v2"}, []int{8080}, nil))
	manifests.WriteString("---" + echoWorkload("client", "client", map[string]string{"app": "client"}, []int{8080}, nil))
	for _, svc := range []struct{ name, selector string }{{"web", "app: web, version: v1"}, {"web-v1", "app: web, version: v1"}, {"web-v2", "app: web, version: v2"}} {
		fmt.Fprintf(&manifests, "---\napiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec:\n  selector: {%s}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n", svc.name, svc.selector)
	}
	if _, err := env.ApplyYAML(ctx, ns, manifests.String()); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"web-v1", "web-v2", "client"} {
		if err := env.WaitDeploymentAvailable(ctx, ns, d, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	split := `
apiVersion: mesh.trellis.io/v1alpha1
kind: TrafficSplit
metadata: {name: web}
spec:
  service: web
  backends: [{service: web-v1, weight: 90}, {service: web-v2, weight: 10}]
`
	objs, err := env.ApplyYAML(ctx, ns, split)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.WaitCondition(ctx, objs[0], "Accepted", "True", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitProxiesConverged(ctx, t, ns)

	const requests = 10000
	c := countFrom(ctx, t, ns, "client", "http://web/", requests, "")
	if c.Errors != 0 || c.Statuses[200] != requests {
		t.Fatalf("requests through the split failed: %+v", c)
	}
	share := float64(c.Backends["web-v2"]) / requests
	t.Logf("90/10 split over %d requests: web-v1 %d, web-v2 %d (%.2f%%)", requests, c.Backends["web-v1"], c.Backends["web-v2"], 100*share)
	if share < 0.08 || share > 0.12 {
		t.Errorf("web-v2 got %.2f%% of the requests, want 10%% ± 2%%", 100*share)
	}

	// A header match: requests with x-canary: 1 go to web-v2 only; the others reach the root service (web-v1 pods).
	objs, err = env.ApplyYAML(ctx, ns, `
apiVersion: mesh.trellis.io/v1alpha1
kind: TrafficSplit
metadata: {name: web}
spec:
  service: web
  backends: [{service: web-v1, weight: 0}, {service: web-v2, weight: 100}]
  matches: [{headers: [{name: x-canary, value: "1"}]}]
`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.WaitCondition(ctx, objs[0], "Accepted", "True", time.Minute); err != nil {
		t.Fatal(err)
	}
	waitProxiesConverged(ctx, t, ns)
	canary := countFrom(ctx, t, ns, "client", "http://web/", 500, "x-canary:1")
	plain := countFrom(ctx, t, ns, "client", "http://web/", 500, "")
	t.Logf("header match: with x-canary %v, without %v", canary.Backends, plain.Backends)
	if canary.Backends["web-v2"] != 500 {
		t.Errorf("requests with the header should all go to web-v2: %+v", canary)
	}
	if plain.Backends["web-v1"] != 500 {
		t.Errorf("requests without the header should all go to the root service's web-v1 pods: %+v", plain)
	}
}

// verdict is what a client saw: "allow" (HTTP 200), "403" (HTTP refusal) or "closed" (connection error).
func verdict(c echoCounts) string {
	switch {
	case c.Statuses[200] == 1:
		return "allow"
	case c.Statuses[403] == 1:
		return "403"
	case c.Errors == 1:
		return "closed"
	}
	return fmt.Sprintf("unexpected %+v", c)
}

// TestAuthorizationMatrixOnCluster checks, for HTTP and opaque TCP, who may call a server: under a MeshPolicy that
// allows one ServiceAccount, and under each of the Mesh's default policies; kubelet probes always pass.
func TestAuthorizationMatrixOnCluster(t *testing.T) {
	ctx := context.Background()
	ensureMesh(ctx, t)
	meshed := map[string]string{"trellis.io/inject": "enabled"}
	srv := env.Namespace(t, "authz-srv", meshed)
	cli := env.Namespace(t, "authz-cli", meshed)
	other := env.Namespace(t, "authz-other", meshed)
	plain := env.Namespace(t, "authz-plain", nil)
	opaque := map[string]string{"config.trellis.io/opaque-ports": "8081"}
	var server strings.Builder
	for _, app := range []string{"guarded", "open"} {
		server.WriteString(echoWorkload(app, app, map[string]string{"app": app}, []int{8080, 8081}, opaque))
		fmt.Fprintf(&server, "---\napiVersion: v1\nkind: Service\nmetadata: {name: %s, annotations: {config.trellis.io/opaque-ports: \"81\"}}\n"+
			"spec:\n  selector: {app: %s}\n  ports: [{name: http, port: 80, targetPort: 8080}, {name: tcp, port: 81, targetPort: 8081}]\n---\n", app, app)
	}
	server.WriteString(`
apiVersion: mesh.trellis.io/v1alpha1
kind: MeshPolicy
metadata: {name: guarded}
spec:
  targetRef: {kind: Service, name: guarded}
  authorization:
    rules:
    - name: allowed-client
      from: [{serviceAccount: {namespace: ` + cli + `, name: allowed}}]
`)
	deploy := func(ns, text string, apps ...string) {
		if _, err := env.ApplyYAML(ctx, ns, text); err != nil {
			t.Fatal(err)
		}
		for _, d := range apps {
			if err := env.WaitDeploymentAvailable(ctx, ns, d, 3*time.Minute); err != nil {
				t.Fatal(err)
			}
		}
	}
	deploy(srv, server.String(), "guarded", "open")
	deploy(cli, echoWorkload("allowed", "allowed", map[string]string{"app": "allowed"}, []int{8080}, nil)+"---"+
		echoWorkload("stranger", "stranger", map[string]string{"app": "stranger"}, []int{8080}, nil), "allowed", "stranger")
	deploy(other, echoWorkload("neighbour", "default", map[string]string{"app": "neighbour"}, []int{8080}, nil), "neighbour")
	deploy(plain, echoWorkload("outsider", "default", map[string]string{"app": "outsider"}, []int{8080}, nil), "outsider")
	for _, ns := range []string{srv, cli, other} {
		waitProxiesConverged(ctx, t, ns)
	}

	type client struct{ name, ns, app string }
	clients := []client{{"allowed identity", cli, "allowed"}, {"other identity", cli, "stranger"},
		{"other namespace", other, "neighbour"}, {"unauthenticated", plain, "outsider"}}
	check := func(server string, want map[string][2]string) {
		t.Helper()
		for _, c := range clients {
			got := [2]string{
				verdict(countFrom(ctx, t, c.ns, c.app, fmt.Sprintf("http://%s.%s/", server, srv), 1, "")),
				verdict(countFrom(ctx, t, c.ns, c.app, fmt.Sprintf("http://%s.%s:81/", server, srv), 1, "")),
			}
			if got != want[c.name] {
				t.Errorf("%s -> %s: HTTP %s, TCP %s; want HTTP %s, TCP %s", c.name, server, got[0], got[1], want[c.name][0], want[c.name][1])
			}
		}
	}
	allow, deny := [2]string{"allow", "allow"}, [2]string{"403", "closed"}

	// The MeshPolicy allows one ServiceAccount and denies everyone else.
	check("guarded", map[string][2]string{"allowed identity": allow, "other identity": deny, "other namespace": deny, "unauthenticated": deny})

	// The Mesh's default policies, on the server without a MeshPolicy.
	t.Cleanup(func() { setDefaultPolicy(context.Background(), t, "AllUnauthenticated", srv) })
	for _, tc := range []struct {
		policy string
		want   map[string][2]string
	}{
		{"AllUnauthenticated", map[string][2]string{"allowed identity": allow, "other identity": allow, "other namespace": allow, "unauthenticated": allow}},
		{"AllAuthenticated", map[string][2]string{"allowed identity": allow, "other identity": allow, "other namespace": allow, "unauthenticated": deny}},
		// Unauthenticated clients from the cluster's (private) pod network are allowed.
		{"ClusterAuthenticated", map[string][2]string{"allowed identity": allow, "other identity": allow, "other namespace": allow, "unauthenticated": allow}},
		{"Deny", map[string][2]string{"allowed identity": deny, "other identity": deny, "other namespace": deny, "unauthenticated": deny}},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			setDefaultPolicy(ctx, t, tc.policy, srv)
			check("open", tc.want)
		})
	}

	// Under Deny, kubelet probes still reach the servers: their pods stay Ready.
	time.Sleep(6 * time.Second)
	for _, app := range []string{"guarded", "open"} {
		for _, p := range podsOf(ctx, t, srv, app) {
			ready := false
			for _, c := range p.Status.Conditions {
				ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
			}
			if !ready {
				t.Errorf("pod %s/%s is not Ready under the Deny policy: kubelet probes must always pass", srv, p.Name)
			}
			m, err := proxyGet(ctx, srv, p.Name, "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			if n := metricSum(string(m), "inbound_http_authz_allow_total", map[string]string{"rule": "probe"}); n == 0 {
				t.Errorf("pod %s: no probe was counted as allowed", p.Name)
			}
		}
	}
}

// setDefaultPolicy sets the default Mesh's defaultPolicy and waits until the proxies of ns run it.
func setDefaultPolicy(ctx context.Context, t *testing.T, policy, ns string) {
	t.Helper()
	if _, err := env.Kubectl(ctx, "patch", "mesh", "default", "--type=merge", "-p", fmt.Sprintf(`{"spec":{"defaultPolicy":%q}}`, policy)); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitFor(ctx, time.Minute, "the rendered configuration to carry "+policy, func(ctx context.Context) (bool, error) {
		var cm corev1.ConfigMap
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "trellis-proxy-config"}, &cm); err != nil {
			return false, nil
		}
		want := map[string]string{"AllUnauthenticated": "all-unauthenticated", "AllAuthenticated": "all-authenticated",
			"ClusterAuthenticated": "cluster-authenticated", "Deny": "deny"}[policy]
		cfg, err := proxyconfig.Decode([]byte(cm.Data["config.json"]))
		return err == nil && cfg.Inbound != nil && cfg.Inbound.DefaultPolicy == want, nil
	}); err != nil {
		t.Fatal(err)
	}
	waitProxiesConverged(ctx, t, ns)
}
