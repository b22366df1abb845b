//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/internal/inject"
)

// setNativeSidecar sets the default Mesh's spec.proxy.nativeSidecar and waits until the Mesh has reconciled it.
func setNativeSidecar(ctx context.Context, t *testing.T, native bool) {
	t.Helper()
	patchMesh(ctx, t, fmt.Sprintf(`{"spec":{"proxy":{"nativeSidecar":%t}}}`, native), fmt.Sprintf("the Mesh Ready with nativeSidecar %t", native))
}

// TestClassicSidecarStartsTheApplicationAfterTheProxy meshes a pod in the classic layout (the proxy as the first
// regular container) whose application's first act is one request through the mesh, not retried. The proxy's
// postStart hook holds the application back until the proxy is ready, so that request succeeds; without the hook
// the redirect would send it to a proxy not yet listening.
func TestClassicSidecarStartsTheApplicationAfterTheProxy(t *testing.T) {
	ctx := context.Background()
	ensureMesh(ctx, t)
	env.CollectOnFailure(t)
	t.Cleanup(func() { setNativeSidecar(context.Background(), t, true) })
	setNativeSidecar(ctx, t, false)
	ns := env.Namespace(t, "classic", map[string]string{"trellis.io/inject": "enabled"})
	deployEcho(ctx, t, ns, "echo", 1)

	// The injector reads the Mesh from the manager's cache: create the client pod until it gets the classic layout.
	var pod corev1.Pod
	for attempt := 0; ; attempt++ {
		name := fmt.Sprintf("first-request-%d", attempt)
		if _, err := env.ApplyYAML(ctx, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: %s
    imagePullPolicy: IfNotPresent
    args: [get, "http://echo.%s/", -tries, "1"]
`, name, echoImage, ns)); err != nil {
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
	hook := pod.Spec.Containers[0].Lifecycle
	if hook == nil || hook.PostStart == nil || hook.PostStart.Exec == nil {
		t.Fatalf("the classic proxy container has no postStart hook: %+v", hook)
	}

	// The application's single request must succeed: it exits 0.
	var app *corev1.ContainerStatus
	err := env.WaitFor(ctx, 3*time.Minute, "the application container of "+pod.Name+" to finish", func(ctx context.Context) (bool, error) {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(&pod), &pod); err != nil {
			return false, err
		}
		for i := range pod.Status.ContainerStatuses {
			if s := &pod.Status.ContainerStatuses[i]; s.Name == "app" && s.State.Terminated != nil {
				app = s
				return true, nil
			}
		}
		return false, nil
	})
	logs, _ := env.Logs(ctx, ns, pod.Name, "app")
	if err != nil {
		t.Fatalf("%v; application log: %s", err, logs)
	}
	if code := app.State.Terminated.ExitCode; code != 0 {
		t.Fatalf("the application's first request failed (exit code %d): %s", code, logs)
	}
	var proxyStarted time.Time
	for _, s := range pod.Status.ContainerStatuses {
		if s.Name == inject.ProxyContainerName && s.State.Running != nil {
			proxyStarted = s.State.Running.StartedAt.Time
		}
	}
	t.Logf("the application started %v after the proxy and its first request succeeded",
		app.State.Terminated.StartedAt.Sub(proxyStarted).Round(10*time.Millisecond))
}
