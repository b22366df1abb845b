package framework

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// CollectArtifacts writes what is needed to understand a failure into a new folder below ArtifactsDir and returns
// it: every component's log (etcd, kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy, containerd,
// Prometheus), every pod's container logs (current and previous), kubectl describe of pods that are not Ready,
// nodes, and events, and YAML of the cert-manager and Trellis objects. Collection errors are written into the
// folder, never returned.
func (e *Env) CollectArtifacts(ctx context.Context, name string) string {
	dir := filepath.Join(e.ArtifactsDir, time.Now().Format("20060102-150405")+"-"+sanitize(name))
	if err := os.MkdirAll(filepath.Join(dir, "pods"), 0o755); err != nil {
		return err.Error()
	}
	var errs []string
	write := func(file, content string, err error) {
		if err != nil {
			content += "\n# error: " + err.Error()
		}
		if werr := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); werr != nil {
			errs = append(errs, werr.Error())
		}
	}
	// component logs
	logs, _ := filepath.Glob(filepath.Join(e.StateDir, "logs", "*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		write("component-"+filepath.Base(l), string(b), err)
	}
	kubectl := func(file string, args ...string) {
		out, err := e.Kubectl(ctx, args...)
		write(file, out, err)
	}
	kubectl("get-all.txt", "get", "nodes,all,events,leases,endpointslices,configmaps,secrets,serviceaccounts", "-A", "-o", "wide")
	kubectl("describe-nodes.txt", "describe", "nodes")
	kubectl("events.txt", "get", "events", "-A", "--sort-by=.lastTimestamp")
	kubectl("webhooks.yaml", "get", "validatingwebhookconfigurations,mutatingwebhookconfigurations", "-o", "yaml")
	kubectl("cert-manager.yaml", "get", "issuers,clusterissuers,certificates,certificaterequests", "-A", "-o", "yaml")
	kubectl("crds.txt", "get", "crds")
	if out, err := e.Kubectl(ctx, "api-resources", "--api-group=mesh.trellis.io", "-o", "name"); err == nil {
		for _, r := range strings.Fields(out) {
			kubectl("trellis-"+sanitize(r)+".yaml", "get", r, "-A", "-o", "yaml")
		}
	}
	var pods corev1.PodList
	if err := e.Client.List(ctx, &pods); err != nil {
		errs = append(errs, "list pods: "+err.Error())
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		base := filepath.Join("pods", p.Namespace+"_"+p.Name)
		if !PodReady(p) && p.Status.Phase != corev1.PodSucceeded {
			kubectl(base+".describe.txt", "-n", p.Namespace, "describe", "pod", p.Name)
		}
		for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
			kubectl(base+"_"+c.Name+".log", "-n", p.Namespace, "logs", p.Name, "-c", c.Name)
			if restarted(p, c.Name) {
				kubectl(base+"_"+c.Name+".previous.log", "-n", p.Namespace, "logs", p.Name, "-c", c.Name, "--previous")
			}
		}
	}
	if len(errs) > 0 {
		write("collection-errors.txt", strings.Join(errs, "\n"), nil)
	}
	fmt.Printf("e2e: artifacts written to %s\n", dir)
	return dir
}

func restarted(p *corev1.Pod, container string) bool {
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if s.Name == container {
			return s.RestartCount > 0
		}
	}
	return false
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, s)
}
