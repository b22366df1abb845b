package inject

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	out := io.Discard
	if os.Getenv("TRELLIS_TEST_LOG") != "" {
		out = os.Stderr
	}
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.WriteTo(out)))
	testenv.MainWithOptions(m, &env, testenv.Options{
		Configure: func(e *envtest.Environment) {
			e.WebhookInstallOptions = envtest.WebhookInstallOptions{
				MutatingWebhooks: []*admissionregistrationv1.MutatingWebhookConfiguration{webhookConfiguration()},
			}
		},
		Setup: startWebhook,
	})
}

// webhookConfiguration sends every Pod creation to the handler, with failurePolicy Fail so that a handler that
// is not called fails the test instead of passing silently. envtest points the service at the test's server.
func webhookConfiguration() *admissionregistrationv1.MutatingWebhookConfiguration {
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "trellis-inject"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "inject.mesh.trellis.io",
			ClientConfig: admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{
				Namespace: "trellis-system", Name: "trellis-webhook", Path: ptr.To(WebhookPath),
			}},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
				},
			}},
			FailurePolicy:           ptr.To(admissionregistrationv1.Fail),
			SideEffects:             ptr.To(admissionregistrationv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"},
			TimeoutSeconds:          ptr.To[int32](10),
		}},
	}
}

// startWebhook creates the default Mesh and serves the handler where envtest sent the webhook.
func startWebhook(e *testenv.Env) (func(), error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := meshv1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(e.Config, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := c.Create(ctx, &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "default"}}); err != nil {
		cancel()
		return nil, err
	}
	opts := e.Environment.WebhookInstallOptions
	srv := webhook.NewServer(webhook.Options{Host: opts.LocalServingHost, Port: opts.LocalServingPort, CertDir: opts.LocalServingCertDir})
	srv.Register(WebhookPath, &webhook.Admission{Handler: NewWebhook(c, ClientMeshLookup{Reader: c}, testImages, scheme)})
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for srv.StartedChecker()(nil) != nil {
		select {
		case err := <-done:
			cancel()
			return nil, fmt.Errorf("webhook server: %w", err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			return nil, fmt.Errorf("webhook server did not start")
		}
	}
	return func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, "webhook server:", err)
		}
	}, nil
}

// warnings records the API server's warnings.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeaderWithContext(_ context.Context, _ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.list
	w.list = nil
	return out
}

// kube returns a clientset whose warnings are recorded.
func kube(t *testing.T) (*kubernetes.Clientset, *warnings) {
	t.Helper()
	env.Require(t)
	w := &warnings{}
	cfg := rest.CopyConfig(env.Config)
	cfg.WarningHandlerWithContext = w
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs, w
}

// namespace creates a namespace with the given labels (or updates them for an existing one).
func namespace(t *testing.T, cs *kubernetes.Clientset, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	ns, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		ns = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return
	}
	ns.Labels = labels
	if _, err := cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func appPod(mutate ...func(*corev1.Pod)) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "web-5d9c7b-", Labels: map[string]string{"app": "web"}},
		// The ServiceAccount admission plugin, which envtest turns off, would set the name in a cluster.
		Spec: corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{{
			Name: "web", Image: "example.com/web:1",
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intOrName("http")}}},
		}}},
	}
	for _, m := range mutate {
		m(pod)
	}
	return pod
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// TestWebhook creates pods through the real API server and checks what it stores.
func TestWebhook(t *testing.T) {
	cs, warned := kube(t)
	enabled := map[string]string{wellknown.LabelInject: wellknown.InjectEnabled}
	disabled := map[string]string{wellknown.LabelInject: wellknown.InjectDisabled}
	namespace(t, cs, "shop", enabled)
	namespace(t, cs, "plain", nil)
	namespace(t, cs, "legacy", disabled)
	namespace(t, cs, "kube-system", enabled)
	namespace(t, cs, "trellis-system", enabled)
	namespace(t, cs, "secure", map[string]string{wellknown.LabelInject: wellknown.InjectEnabled, LabelPodSecurityEnforce: "baseline"})

	alreadyInjected := appPod()
	if _, err := InjectPodSpec(&alreadyInjected.ObjectMeta, &alreadyInjected.Spec, DefaultParams(testImages)); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, namespace string
		pod             *corev1.Pod
		injected        bool
		warning         string
	}{
		{name: "enabled namespace", namespace: "shop", pod: appPod(), injected: true},
		{name: "named pod", namespace: "shop", pod: appPod(func(p *corev1.Pod) { p.GenerateName, p.Name = "", "web" }), injected: true},
		{name: "unlabelled namespace", namespace: "plain", pod: appPod()},
		{name: "disabled namespace", namespace: "legacy", pod: appPod()},
		{name: "pod opts out", namespace: "shop", pod: appPod(func(p *corev1.Pod) { p.Labels[wellknown.LabelInject] = wellknown.InjectDisabled })},
		{name: "pod opts in outside any mesh", namespace: "plain",
			pod:     appPod(func(p *corev1.Pod) { p.Annotations = map[string]string{wellknown.LabelInject: wellknown.InjectEnabled} }),
			warning: "trellis: pod not injected: the pod opts in with trellis.io/inject=enabled, but namespace plain belongs to no Mesh"},
		{name: "kube-system", namespace: "kube-system", pod: appPod(func(p *corev1.Pod) { p.Labels[wellknown.LabelInject] = wellknown.InjectEnabled })},
		{name: "control-plane namespace", namespace: "trellis-system", pod: appPod(),
			warning: "trellis: pod not injected: namespace trellis-system is labelled trellis.io/inject=enabled, but namespace trellis-system belongs to no Mesh"},
		// Pod Security Admission would refuse the injected pod; the plain one starts.
		{name: "pod security", namespace: "secure", pod: appPod(),
			warning: "trellis: pod not injected: namespace secure enforces the baseline Pod Security Standard"},
		{name: "host network", namespace: "shop", pod: appPod(func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
			warning: "trellis: pod not injected: the pod uses the host network"},
		{name: "bad override", namespace: "shop", pod: appPod(func(p *corev1.Pod) {
			p.Annotations = map[string]string{wellknown.AnnotationLogLevel: "loud"}
		}), warning: `trellis: pod not injected: annotation config.trellis.io/log-level: "loud": want debug, info, warn or error`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			got, err := cs.CoreV1().Pods(tc.namespace).Create(ctx, tc.pod, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("creating the pod: %v", err)
			}
			ws := warned.take()
			if tc.warning == "" && len(ws) > 0 || tc.warning != "" && (len(ws) != 1 || !strings.HasPrefix(ws[0], tc.warning)) {
				t.Errorf("warnings %q, want %q", ws, tc.warning)
			}
			stored, err := cs.CoreV1().Pods(tc.namespace).Get(ctx, got.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !tc.injected {
				if IsInjected(&stored.ObjectMeta, &stored.Spec) || len(stored.Spec.InitContainers) > 0 || len(stored.Spec.Containers) != 1 {
					t.Fatalf("pod was changed: init containers %v, containers %v, annotations %v",
						containerNames(stored.Spec.InitContainers), containerNames(stored.Spec.Containers), stored.Annotations)
				}
				return
			}
			checkInjected(t, stored)
		})
	}

	// Injecting twice: a pod that arrives injected is stored as it was sent.
	t.Run("already injected", func(t *testing.T) {
		stored, err := cs.CoreV1().Pods("shop").Create(context.Background(), alreadyInjected, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if ws := warned.take(); len(ws) > 0 {
			t.Errorf("warnings %q", ws)
		}
		if got, want := containerNames(stored.Spec.InitContainers), []string{InitContainerName, ProxyContainerName}; !equality.Semantic.DeepEqual(got, want) {
			t.Fatalf("init containers %v, want %v", got, want)
		}
		if len(stored.Spec.Volumes) != 4 || len(stored.Spec.Containers) != 1 {
			t.Fatalf("volumes %v, containers %v", stored.Spec.Volumes, containerNames(stored.Spec.Containers))
		}
		checkInjected(t, stored)
	})

	// Why the webhook leaves such namespaces alone: the API server refuses injected pods there.
	t.Run("pod security refuses injected pods", func(t *testing.T) {
		_, err := cs.CoreV1().Pods("secure").Create(context.Background(), alreadyInjected.DeepCopy(), metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "NET_ADMIN") {
			t.Fatalf("creating an injected pod in a baseline namespace: %v, want forbidden for NET_ADMIN", err)
		}
	})

	// A Job's pod gets the proxy as a native sidecar, so the kubelet stops it when the job's container exits.
	t.Run("job pod", func(t *testing.T) {
		job := appPod(func(p *corev1.Pod) {
			p.GenerateName = "migrate-"
			p.Labels = map[string]string{"job-name": "migrate"}
			p.Spec.RestartPolicy = corev1.RestartPolicyNever
		})
		stored, err := cs.CoreV1().Pods("shop").Create(context.Background(), job, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		checkInjected(t, stored)
		if stored.Spec.RestartPolicy != corev1.RestartPolicyNever {
			t.Errorf("restartPolicy %s", stored.Spec.RestartPolicy)
		}
	})

	// A Mesh that turns native sidecars off gets the classic layout.
	t.Run("classic", func(t *testing.T) {
		c := meshClient(t)
		mesh := &meshv1alpha1.Mesh{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: "default"}, mesh); err != nil {
			t.Fatal(err)
		}
		mesh.Spec.Proxy.NativeSidecar = ptr.To(false)
		if err := c.Update(context.Background(), mesh); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			mesh.Spec.Proxy.NativeSidecar = ptr.To(true)
			if err := c.Update(context.Background(), mesh); err != nil {
				t.Error(err)
			}
		})
		stored, err := cs.CoreV1().Pods("shop").Create(context.Background(), appPod(), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := containerNames(stored.Spec.InitContainers), []string{InitContainerName}; !equality.Semantic.DeepEqual(got, want) {
			t.Fatalf("init containers %v, want %v", got, want)
		}
		if got, want := containerNames(stored.Spec.Containers), []string{ProxyContainerName, "web"}; !equality.Semantic.DeepEqual(got, want) {
			t.Fatalf("containers %v, want %v", got, want)
		}
		if stored.Annotations[AnnotationDefaultContainer] != "web" {
			t.Errorf("annotations %v", stored.Annotations)
		}
	})
}

func meshClient(t *testing.T) client.Client {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := meshv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkInjected checks a stored pod carries the default Mesh's native-sidecar proxy.
func checkInjected(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if got, want := containerNames(pod.Spec.InitContainers), []string{InitContainerName, ProxyContainerName}; !equality.Semantic.DeepEqual(got, want) {
		t.Fatalf("init containers %v, want %v", got, want)
	}
	proxy := &pod.Spec.InitContainers[1]
	if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("proxy restartPolicy %v, want Always", proxy.RestartPolicy)
	}
	if pod.Annotations[wellknown.AnnotationInjected] != "default" || pod.Labels[wellknown.LabelProxy] != wellknown.ProxySidecar {
		t.Errorf("annotations %v, labels %v", pod.Annotations, pod.Labels)
	}
	for name, want := range map[string]string{
		EnvTrustDomain: "cluster.local", EnvIdentityAddr: "trellis-identity.trellis-system.svc:8080",
		EnvInboundProbePaths: "8080:/healthz", EnvInboundProbePorts: "",
		EnvOpaquePorts:   "25,587,3306,4444,5432,6379,9300,11211",
		EnvPodLabelsFile: "/var/run/trellis/podinfo/labels",
	} {
		if got := envValue(proxy, name); got != want {
			t.Errorf("%s=%q, want %q", name, got, want)
		}
	}
	podinfo := false
	for _, v := range pod.Spec.Volumes {
		if d := v.DownwardAPI; v.Name == PodInfoVolumeName && d != nil && len(d.Items) == 1 &&
			d.Items[0].Path == "labels" && d.Items[0].FieldRef.FieldPath == "metadata.labels" {
			podinfo = true
		}
	}
	if !podinfo {
		t.Errorf("no downward API volume of the pod's labels in %v", pod.Spec.Volumes)
	}
	if proxy.Image != testImages.Proxy || pod.Spec.InitContainers[0].Image != testImages.ProxyInit {
		t.Errorf("images %s, %s", proxy.Image, pod.Spec.InitContainers[0].Image)
	}
}

func intOrName(name string) intstr.IntOrString { return intstr.FromString(name) }
