//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/test/e2e/framework"
)

// echoImage is the test workload built from test/apps/echo by `make images`.
const echoImage = framework.ImageRepo + "/echo:dev"

// deployEcho runs the echo app as a Deployment with a ClusterIP Service (port 80 -> 8080) named name, annotated
// for Prometheus, waits until its pods are Ready and returns the Service's ClusterIP.
func deployEcho(ctx context.Context, t *testing.T, ns, name string, replicas int) string {
	t.Helper()
	_, err := env.ApplyYAML(ctx, ns, fmt.Sprintf(`
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s}
spec:
  replicas: %[2]d
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata:
      labels: {app: %[1]s}
      annotations: {prometheus.io/scrape: "true", prometheus.io/port: "8080", prometheus.io/path: /metrics}
    spec:
      containers:
      - name: echo
        image: %[3]s
        imagePullPolicy: IfNotPresent
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: %[1]s}
spec:
  selector: {app: %[1]s}
  ports: [{name: http, port: 80, targetPort: http}]
`, name, replicas, echoImage))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.WaitPodsReady(ctx, ns, "app="+name, replicas, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	var svc corev1.Service
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &svc); err != nil {
		t.Fatal(err)
	}
	return svc.Spec.ClusterIP
}

// runClient runs the echo app's client mode in a pod (`echo get <url>`) until it succeeds and returns its output.
func runClient(ctx context.Context, t *testing.T, ns, name, url string) string {
	t.Helper()
	if _, err := env.ApplyYAML(ctx, ns, fmt.Sprintf(`
apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: %s
    imagePullPolicy: IfNotPresent
    args: [get, %q, -tries, "30"]
`, name, echoImage, url)); err != nil {
		t.Fatal(err)
	}
	if _, err := env.WaitPodPhase(ctx, ns, name, 2*time.Minute, corev1.PodSucceeded); err != nil {
		logs, _ := env.Logs(ctx, ns, name, "client")
		t.Fatalf("%v; client log: %s", err, logs)
	}
	out, err := env.Logs(ctx, ns, name, "client")
	if err != nil {
		t.Fatal(err)
	}
	return out
}
