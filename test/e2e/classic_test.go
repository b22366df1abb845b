//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/internal/inject"
)

// setNativeSidecar sets the default Mesh's spec.proxy.nativeSidecar and waits until the Mesh has reconciled it.
func setNativeSidecar(ctx context.Context, t *testing.T, native bool) {
	t.Helper()
	patchMesh(ctx, t, fmt.Sprintf(`{"spec":{"proxy":{"nativeSidecar":%t}}}`, native), fmt.Sprintf("the Mesh Ready with nativeSidecar %t", native))
}

// scaleManager sets the manager Deployment's replicas and waits until it runs that many available pods (and, for 0,
// until its pods are gone: no identity service, no injector).
func scaleManager(ctx context.Context, t *testing.T, replicas int32) {
	t.Helper()
	in := requireTrellis(t)
	if _, err := env.Kubectl(ctx, "-n", in.Namespace, "scale", "deploy/"+in.Deployment, fmt.Sprintf("--replicas=%d", replicas)); err != nil {
		t.Fatal(err)
	}
	if replicas > 0 {
		if err := env.WaitDeploymentAvailable(ctx, in.Namespace, in.Deployment, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := env.WaitFor(ctx, 2*time.Minute, "the manager's pods to go", func(ctx context.Context) (bool, error) {
		pods, err := managerPods(ctx)
		return len(pods) == 0, err
	}); err != nil {
		t.Fatal(err)
	}
}

// managerPods lists the pods of the manager Deployment, terminating ones included.
func managerPods(ctx context.Context) ([]corev1.Pod, error) {
	in := env.Trellis
	var d appsv1.Deployment
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: in.Namespace, Name: in.Deployment}, &d); err != nil {
		return nil, err
	}
	var pods corev1.PodList
	err := env.Client.List(ctx, &pods, client.InNamespace(in.Namespace), client.MatchingLabels(d.Spec.Selector.MatchLabels))
	return pods.Items, err
}

// containerStarted reports whether the kubelet has recorded a Started event for a container of a pod.
func containerStarted(ctx context.Context, ns, pod, container string) (bool, error) {
	var events corev1.EventList
	if err := env.Client.List(ctx, &events, client.InNamespace(ns)); err != nil {
		return false, err
	}
	for _, e := range events.Items {
		if e.InvolvedObject.Kind == "Pod" && e.InvolvedObject.Name == pod && e.Reason == "Started" &&
			e.InvolvedObject.FieldPath == "spec.containers{"+container+"}" {
			return true, nil
		}
	}
	return false, nil
}

// containerStatus returns the status of a pod's regular container, or nil.
func containerStatus(p *corev1.Pod, name string) *corev1.ContainerStatus {
	for i := range p.Status.ContainerStatuses {
		if p.Status.ContainerStatuses[i].Name == name {
			return &p.Status.ContainerStatuses[i]
		}
	}
	return nil
}

// TestClassicSidecarStartsTheApplicationAfterTheProxy meshes a pod in the classic layout (the proxy as the first
// regular container) whose application's first act is one request through the mesh, not retried. The pod starts
// while the identity service is down, so its proxy runs but is not ready (it has no certificate, and a meshed request
// would fail with 502). The proxy's postStart hook holds the application back meanwhile; once the identity service is
// back the proxy gets its certificate, the application starts and its request succeeds.
func TestClassicSidecarStartsTheApplicationAfterTheProxy(t *testing.T) {
	ctx := context.Background()
	ensureMesh(ctx, t)
	env.CollectOnFailure(t)
	t.Cleanup(func() { setNativeSidecar(context.Background(), t, true) })
	setNativeSidecar(ctx, t, false)
	ns := env.Namespace(t, "classic", map[string]string{"trellis.io/inject": "enabled"})
	deployEcho(ctx, t, ns, "echo", 1)

	// The injector reads the Mesh from the manager's cache: create the client pod until it gets the classic layout.
	// A scheduling gate keeps it off the node until the identity service is down.
	const gate = "trellis.io/e2e-hold"
	var pod corev1.Pod
	for attempt := 0; ; attempt++ {
		name := fmt.Sprintf("first-request-%d", attempt)
		if _, err := env.ApplyYAML(ctx, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  schedulingGates: [{name: %s}]
  restartPolicy: Never
  containers:
  - name: app
    image: %s
    imagePullPolicy: IfNotPresent
    args: [get, "http://echo.%s/", -tries, "1"]
`, name, gate, echoImage, ns)); err != nil {
			t.Fatal(err)
		}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &pod); err != nil {
			t.Fatal(err)
		}
		if len(pod.Spec.Containers) == 2 && pod.Spec.Containers[0].Name == inject.ProxyContainerName {
			break
		}
		if attempt == 10 {
			t.Fatalf("pod %s is not in the classic layout: containers %d, init containers %d", name,
				len(pod.Spec.Containers), len(pod.Spec.InitContainers))
		}
		time.Sleep(time.Second)
	}
	if hook := pod.Spec.Containers[0].Lifecycle; hook == nil || hook.PostStart == nil || hook.PostStart.Exec == nil {
		t.Fatalf("the classic proxy container has no postStart hook: %+v", hook)
	}

	// Identity service down, then the pod onto the node: the proxy starts, the application must not.
	t.Cleanup(func() { scaleManager(context.Background(), t, 1) })
	scaleManager(ctx, t, 0)
	patch := client.MergeFrom(pod.DeepCopy())
	pod.Spec.SchedulingGates = nil
	if err := env.Client.Patch(ctx, &pod, patch); err != nil {
		t.Fatal(err)
	}
	// The kubelet reports the container's state only once its postStart hook has returned: its event says it started.
	if err := env.WaitFor(ctx, 2*time.Minute, "the proxy container of "+pod.Name+" to start", func(ctx context.Context) (bool, error) {
		return containerStarted(ctx, ns, pod.Name, inject.ProxyContainerName)
	}); err != nil {
		t.Fatal(err)
	}
	// Watch the pod for a few seconds of the outage: the application stays waiting.
	for range 10 {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(&pod), &pod); err != nil {
			t.Fatal(err)
		}
		started, err := containerStarted(ctx, ns, pod.Name, "app")
		if err != nil {
			t.Fatal(err)
		}
		if s := containerStatus(&pod, "app"); started || s != nil && (s.State.Running != nil || s.State.Terminated != nil) {
			logs, _ := env.Logs(ctx, ns, pod.Name, "app")
			t.Fatalf("the application started while its proxy had no certificate: %+v; log: %s", s, logs)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Identity service back: the proxy gets its certificate, the application starts and its single request works.
	scaleManager(ctx, t, 1)
	var app *corev1.ContainerStatus
	err := env.WaitFor(ctx, 3*time.Minute, "the application container of "+pod.Name+" to finish", func(ctx context.Context) (bool, error) {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(&pod), &pod); err != nil {
			return false, err
		}
		app = containerStatus(&pod, "app")
		return app != nil && app.State.Terminated != nil, nil
	})
	logs, _ := env.Logs(ctx, ns, pod.Name, "app")
	if err != nil {
		t.Fatalf("%v; application log: %s", err, logs)
	}
	if code := app.State.Terminated.ExitCode; code != 0 {
		t.Fatalf("the application's first request failed (exit code %d): %s", code, logs)
	}
	if proxy := containerStatus(&pod, inject.ProxyContainerName); proxy == nil || proxy.RestartCount != 0 {
		t.Errorf("the proxy container restarted: %+v", proxy)
	}
	t.Logf("the application waited for its proxy through the identity outage; its first request: %s", strings.TrimSpace(logs)[:min(80, len(strings.TrimSpace(logs)))])
}
