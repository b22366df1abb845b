package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/internal/wellknown"
	"github.com/trellis-mesh/trellis/test/e2e/framework"
)

const demoNamespace = "shop"

// runMesh runs the demonstration on the local cluster.
func runMesh() error {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	step("Bringing up the local cluster, building the images and installing Trellis (first run: builds everything)")
	env, err := framework.Setup(ctx, framework.Options{KeepCluster: true})
	if err != nil {
		return err
	}
	if env.Trellis == nil {
		return errors.New("config/default is missing")
	}
	if err := env.WaitDeploymentAvailable(ctx, env.Trellis.Namespace, env.Trellis.Deployment, 3*time.Minute); err != nil {
		return err
	}
	kubectl := func(args ...string) string {
		out, err := env.Kubectl(ctx, args...)
		if err != nil {
			return out + err.Error() + "\n"
		}
		return out
	}

	step("Creating the sample Mesh (config/samples/mesh_v1alpha1_mesh.yaml)")
	objs, err := env.ApplyFile(ctx, "", filepath.Join(env.Root, "config", "samples", "mesh_v1alpha1_mesh.yaml"))
	if err != nil {
		return err
	}
	if _, err := env.WaitCondition(ctx, objs[0], "Ready", "True", 3*time.Minute); err != nil {
		return err
	}
	fmt.Print(kubectl("get", "mesh", "-o", "wide"))

	step("Deploying the shop application, unchanged, into namespace %s (web -> catalog over HTTP, web -> ratings over gRPC)", demoNamespace)
	if err := recreateNamespace(ctx, env); err != nil {
		return err
	}
	if _, err := env.ApplyFile(ctx, demoNamespace, filepath.Join(env.Root, "test", "apps", "shop", "shop.yaml")); err != nil {
		return err
	}
	for _, d := range []string{"web", "catalog", "ratings"} {
		if err := env.WaitDeploymentAvailable(ctx, demoNamespace, d, 3*time.Minute); err != nil {
			return err
		}
	}
	fmt.Print(kubectl("-n", demoNamespace, "get", "pods"))

	step("Meshing it: kubectl label namespace %s trellis.io/inject=enabled, then a rolling restart", demoNamespace)
	fmt.Print(kubectl("label", "namespace", demoNamespace, "trellis.io/inject=enabled"))
	for _, d := range []string{"web", "catalog", "ratings"} {
		fmt.Print(kubectl("-n", demoNamespace, "rollout", "restart", "deploy/"+d))
	}
	for _, d := range []string{"web", "catalog", "ratings"} {
		if _, err := env.Kubectl(ctx, "-n", demoNamespace, "rollout", "status", "deploy/"+d, "--timeout=180s"); err != nil {
			return err
		}
	}
	fmt.Print(kubectl("-n", demoNamespace, "get", "pods"))
	if err := waitConverged(ctx, env); err != nil {
		return err
	}

	step("Sending traffic: a Job in the meshed namespace makes 200 requests to web (the Job completes although it has a proxy)")
	if err := runLoadJob(ctx, env); err != nil {
		return err
	}
	fmt.Print(kubectl("-n", demoNamespace, "logs", "job/shop-load", "-c", "load"))

	step("The mTLS edges the proxies saw (request_total from each proxy's /metrics)")
	if err := printEdges(ctx, env); err != nil {
		return err
	}

	step("kubectl get mesh default -o wide")
	fmt.Print(kubectl("get", "mesh", "default", "-o", "wide"))

	step("trellis check")
	out, _ := trellis(ctx, env, "check")
	fmt.Print(out)

	step("The mesh keeps running. Try:\n    export KUBECONFIG=%s\n    %s -n %s get pods\n    go run ./cmd/trellis check\n"+
		"    make cluster-down    # removes the cluster and every trace of it", env.Kubeconfig, env.KubectlPath, demoNamespace)
	return nil
}

// recreateNamespace starts the demo from a fresh, unlabelled namespace.
func recreateNamespace(ctx context.Context, env *framework.Env) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: demoNamespace}}
	if err := env.Client.Delete(ctx, ns); err == nil {
		fmt.Printf("deleting the previous run's namespace %s\n", demoNamespace)
		if err := env.WaitFor(ctx, 3*time.Minute, "namespace "+demoNamespace+" to go", func(ctx context.Context) (bool, error) {
			err := env.Client.Get(ctx, client.ObjectKey{Name: demoNamespace}, &corev1.Namespace{})
			return apierrors.IsNotFound(err), nil
		}); err != nil {
			return err
		}
	}
	return env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: demoNamespace}})
}

// waitConverged waits until every meshed pod runs the proxy configuration rendered for the namespace.
func waitConverged(ctx context.Context, env *framework.Env) error {
	start := time.Now()
	err := env.WaitFor(ctx, 3*time.Minute, "every proxy to run the rendered configuration", func(ctx context.Context) (bool, error) {
		var cm corev1.ConfigMap
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: demoNamespace, Name: wellknown.ProxyConfigName}, &cm); err != nil {
			return false, nil
		}
		want := cm.Annotations["mesh.trellis.io/config-hash"]
		var pods corev1.PodList
		if err := env.Client.List(ctx, &pods, client.InNamespace(demoNamespace), client.MatchingLabels{wellknown.LabelProxy: wellknown.ProxySidecar}); err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
				continue
			}
			raw, err := env.Clientset.CoreV1().Pods(demoNamespace).ProxyGet("http", p.Name, fmt.Sprint(wellknown.AdminPort), "/config", nil).DoRaw(ctx)
			if err != nil || !bytes.Contains(raw, []byte(want)) {
				return false, nil
			}
		}
		return true, nil
	})
	if err == nil {
		fmt.Printf("every proxy runs the rendered configuration (%s to converge)\n", time.Since(start).Round(time.Second))
	}
	return err
}

func runLoadJob(ctx context.Context, env *framework.Env) error {
	if _, err := env.ApplyFile(ctx, demoNamespace, filepath.Join(env.Root, "test", "apps", "shop", "load-job.yaml")); err != nil {
		return err
	}
	return env.WaitFor(ctx, 4*time.Minute, "the load Job to complete", func(ctx context.Context) (bool, error) {
		var job batchv1.Job
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: demoNamespace, Name: "shop-load"}, &job); err != nil {
			return false, err
		}
		if job.Status.Failed > 0 {
			return false, errors.New("the load Job failed")
		}
		return job.Status.Succeeded > 0, nil
	})
}

// printEdges reads every meshed pod's request_total series and prints who called whom, over what, how often.
func printEdges(ctx context.Context, env *framework.Env) error {
	var pods corev1.PodList
	if err := env.Client.List(ctx, &pods, client.InNamespace(demoNamespace), client.MatchingLabels{wellknown.LabelProxy: wellknown.ProxySidecar}); err != nil {
		return err
	}
	var rows []string
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning {
			continue
		}
		raw, err := env.Clientset.CoreV1().Pods(demoNamespace).ProxyGet("http", p.Name, fmt.Sprint(wellknown.AdminPort), "/metrics", nil).DoRaw(ctx)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if !strings.HasPrefix(line, "request_total{") || strings.HasSuffix(line, " 0") || !strings.Contains(line, `tls="true"`) {
				continue
			}
			labels := parseLabels(line)
			value := line[strings.LastIndex(line, " ")+1:]
			if labels["direction"] == "inbound" {
				rows = append(rows, fmt.Sprintf("  %-28s <- %-48s %6s requests, tls=%s", p.Name, labels["client_id"], value, labels["tls"]))
			} else {
				rows = append(rows, fmt.Sprintf("  %-28s -> %-48s %6s requests, tls=%s", p.Name, labels["server_id"], value, labels["tls"]))
			}
		}
	}
	sort.Strings(rows)
	fmt.Println(strings.Join(rows, "\n"))
	return nil
}

func parseLabels(line string) map[string]string {
	out := map[string]string{}
	body := line[strings.Index(line, "{")+1 : strings.LastIndex(line, "}")]
	for _, kv := range strings.Split(body, `",`) {
		k, v, ok := strings.Cut(kv, `="`)
		if ok {
			out[k] = strings.TrimSuffix(v, `"`)
		}
	}
	return out
}

// trellis runs the trellis CLI from the repository against the cluster.
func trellis(ctx context.Context, env *framework.Env, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", append([]string{"run", "./cmd/trellis"}, append(args, "--kubeconfig", env.Kubeconfig)...)...)
	cmd.Dir = env.Root
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	return string(out), err
}
