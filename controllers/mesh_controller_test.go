package controllers

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/testenv"
)

var (
	env         *testenv.Env
	certManager *testenv.CertManager
)

// controlPlane is the control-plane namespace of the tests' meshes; cert-manager's controller runs against the
// same API server.
const controlPlane = "trellis-system"

func TestMain(m *testing.M) {
	out := io.Discard
	if os.Getenv("TRELLIS_TEST_LOG") != "" {
		out = os.Stderr
	}
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.WriteTo(out)))
	testenv.MainWithSetup(m, &env, func(e *testenv.Env) (func(), error) {
		c, err := client.New(e.Config, client.Options{})
		if err != nil {
			return nil, err
		}
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: controlPlane}}
		if err := c.Create(context.Background(), ns); err != nil {
			return nil, err
		}
		cm, err := e.StartCertManager(controlPlane)
		if err != nil {
			return nil, err
		}
		certManager = cm
		return func() {
			if os.Getenv("TRELLIS_TEST_LOG") != "" {
				fmt.Fprintln(os.Stderr, certManager.Log())
			}
			certManager.Stop()
		}, nil
	}, append(testenv.WithCertManagerCRDs(), testenv.WithGatewayAPICRDs()...)...)
}

// startManager runs the MeshReconciler in a manager against the real API server until the test ends, and returns
// a client that reads straight from the API server.
func startManager(t *testing.T) client.Client {
	t.Helper()
	return startManagerWith(t, func(*MeshReconciler) {})
}

// startManagerWith is startManager with a chance to change the reconciler before it starts, and more runnables
// for the manager.
func startManagerWith(t *testing.T, configure func(*MeshReconciler), runnables ...manager.Runnable) client.Client {
	t.Helper()
	env.Require(t)
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, meshv1alpha1.AddToScheme, cmapi.AddToScheme, gatewayv1.Install} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {Transform: TrimPod},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &MeshReconciler{Client: mgr.GetClient(), CertManagerInstalled: CertManagerServed(mgr.GetRESTMapper()),
		GatewayAPIInstalled: GatewayAPIServed(mgr.GetRESTMapper())}
	configure(r)
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	for _, run := range runnables {
		if err := mgr.Add(run); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	c, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// reconciles returns how many reconciles the mesh controller has finished, from controller-runtime's metrics.
func reconciles(t *testing.T) float64 {
	t.Helper()
	families, err := crmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == "mesh" {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func namespace(t *testing.T, c client.Client, name string, labels map[string]string) {
	t.Helper()
	if err := c.Create(testCtx(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}); err != nil {
		t.Fatal(err)
	}
}

func createMesh(t *testing.T, c client.Client, name string, selector map[string]string) *meshv1alpha1.Mesh {
	t.Helper()
	m := &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if selector != nil {
		m.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: selector}
	}
	if err := c.Create(testCtx(t), m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), m) })
	return m
}

// eventually polls cond until it returns nil or the deadline passes, then fails with cond's last error.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// meshCondition waits until the Mesh's status describes its current generation and the condition has the
// status and reason wanted, and returns the Mesh.
func meshCondition(t *testing.T, c client.Client, name, typ string, status metav1.ConditionStatus, reason string) *meshv1alpha1.Mesh {
	t.Helper()
	m := &meshv1alpha1.Mesh{}
	eventually(t, fmt.Sprintf("Mesh %s condition %s=%s/%s", name, typ, status, reason), func() error {
		if err := c.Get(testCtx(t), client.ObjectKey{Name: name}, m); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(m.Status.Conditions, typ)
		switch {
		case m.Status.ObservedGeneration != m.Generation:
			return fmt.Errorf("observedGeneration %d, generation %d", m.Status.ObservedGeneration, m.Generation)
		case cond == nil:
			return fmt.Errorf("no condition yet: %+v", m.Status.Conditions)
		case cond.Status != status || cond.Reason != reason:
			return fmt.Errorf("got %s/%s: %s", cond.Status, cond.Reason, cond.Message)
		case cond.ObservedGeneration != m.Generation:
			return fmt.Errorf("condition observedGeneration %d, generation %d", cond.ObservedGeneration, m.Generation)
		}
		return nil
	})
	return m
}

func TestMeshSelectsNamespacesAndCountsThem(t *testing.T) {
	c := startManager(t)
	namespace(t, c, "count-a", map[string]string{"team": "count"})
	namespace(t, c, "count-b", map[string]string{"team": "count"})
	namespace(t, c, "count-other", map[string]string{"team": "other"})
	createMesh(t, c, "count", map[string]string{"team": "count"})

	m := meshCondition(t, c, "count", meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	if m.Status.MeshedNamespaces != 2 {
		t.Fatalf("meshedNamespaces = %d, want 2", m.Status.MeshedNamespaces)
	}
	if m.Status.Proxies.Summary != "0/0" {
		t.Errorf("proxies summary = %q, want 0/0", m.Status.Proxies.Summary)
	}
	meshCondition(t, c, "count", meshv1alpha1.ConditionAccepted, metav1.ConditionTrue, meshv1alpha1.ReasonAccepted)

	// Labelling a third namespace moves it into the mesh without touching the Mesh itself.
	other := &corev1.Namespace{}
	if err := c.Get(testCtx(t), client.ObjectKey{Name: "count-other"}, other); err != nil {
		t.Fatal(err)
	}
	other.Labels["team"] = "count"
	if err := c.Update(testCtx(t), other); err != nil {
		t.Fatal(err)
	}
	eventually(t, "three meshed namespaces", func() error {
		if err := c.Get(testCtx(t), client.ObjectKey{Name: "count"}, m); err != nil {
			return err
		}
		if m.Status.MeshedNamespaces != 3 {
			return fmt.Errorf("meshedNamespaces = %d", m.Status.MeshedNamespaces)
		}
		return nil
	})
}

func TestSystemAndControlPlaneNamespacesNeverMeshed(t *testing.T) {
	c := startManager(t)
	cp := &corev1.Namespace{}
	if err := c.Get(testCtx(t), client.ObjectKey{Name: controlPlane}, cp); err != nil {
		t.Fatal(err)
	}
	cp.Labels = map[string]string{"everything": "yes"}
	if err := c.Update(testCtx(t), cp); err != nil {
		t.Fatal(err)
	}
	namespace(t, c, "plain-app", map[string]string{"everything": "yes"})
	ks := &corev1.Namespace{}
	if err := c.Get(testCtx(t), client.ObjectKey{Name: "kube-system"}, ks); err != nil {
		t.Fatal(err)
	}
	if ks.Labels == nil {
		ks.Labels = map[string]string{}
	}
	ks.Labels["everything"] = "yes"
	if err := c.Update(testCtx(t), ks); err != nil {
		t.Fatal(err)
	}
	createMesh(t, c, "everything", map[string]string{"everything": "yes"})
	m := meshCondition(t, c, "everything", meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	if m.Status.MeshedNamespaces != 1 {
		t.Fatalf("meshedNamespaces = %d, want 1 (only plain-app)", m.Status.MeshedNamespaces)
	}
}

func TestOverlappingMeshesReported(t *testing.T) {
	c := startManager(t)
	namespace(t, c, "overlap-shared", map[string]string{"overlap-first": "yes", "overlap-second": "yes"})
	namespace(t, c, "overlap-own", map[string]string{"overlap-second": "yes"})
	createMesh(t, c, "overlap-first", map[string]string{"overlap-first": "yes"})
	meshCondition(t, c, "overlap-first", meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	time.Sleep(1100 * time.Millisecond) // creation timestamps have one-second resolution: make the age order certain
	createMesh(t, c, "overlap-second", map[string]string{"overlap-second": "yes"})

	second := meshCondition(t, c, "overlap-second", meshv1alpha1.ConditionAccepted, metav1.ConditionFalse, meshv1alpha1.ReasonNamespaceConflict)
	msg := meta.FindStatusCondition(second.Status.Conditions, meshv1alpha1.ConditionAccepted).Message
	for _, want := range []string{"overlap-shared", `"overlap-first"`, "namespaceSelector"} {
		if !strings.Contains(msg, want) {
			t.Errorf("conflict message %q lacks %q", msg, want)
		}
	}
	ready := meta.FindStatusCondition(second.Status.Conditions, meshv1alpha1.ConditionReady)
	if ready == nil || ready.Status != metav1.ConditionFalse || ready.Reason != meshv1alpha1.ReasonNamespaceConflict {
		t.Errorf("Ready should be False/NamespaceConflict, got %+v", ready)
	}
	if second.Status.MeshedNamespaces != 1 {
		t.Errorf("the younger mesh keeps only its own namespace: meshedNamespaces = %d, want 1", second.Status.MeshedNamespaces)
	}
	first := meshCondition(t, c, "overlap-first", meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	if first.Status.MeshedNamespaces != 1 {
		t.Errorf("the older mesh keeps the shared namespace: meshedNamespaces = %d, want 1", first.Status.MeshedNamespaces)
	}

	// Deleting the older mesh resolves the conflict without touching the younger one.
	if err := c.Delete(testCtx(t), &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "overlap-first"}}); err != nil {
		t.Fatal(err)
	}
	second = meshCondition(t, c, "overlap-second", meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	if second.Status.MeshedNamespaces != 2 {
		t.Errorf("meshedNamespaces = %d, want 2 after the older mesh left", second.Status.MeshedNamespaces)
	}
}

func TestInvalidSelectorShownAsCondition(t *testing.T) {
	c := startManager(t)
	m := &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "bad-selector"}}
	m.Spec.NamespaceSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: "team", Operator: metav1.LabelSelectorOpIn}, // In needs values
	}}
	if err := c.Create(testCtx(t), m); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), m) })
	got := meshCondition(t, c, "bad-selector", meshv1alpha1.ConditionAccepted, metav1.ConditionFalse, meshv1alpha1.ReasonInvalidSpec)
	msg := meta.FindStatusCondition(got.Status.Conditions, meshv1alpha1.ConditionAccepted).Message
	if !strings.Contains(msg, "spec.namespaceSelector") {
		t.Errorf("message %q does not name the field", msg)
	}
	meshCondition(t, c, "bad-selector", meshv1alpha1.ConditionReady, metav1.ConditionFalse, meshv1alpha1.ReasonInvalidSpec)
}

// TestSteadyStateWritesNothing reconciles an unchanged Mesh again (an unrelated namespace label change requeues
// every Mesh) and checks that the Mesh's resourceVersion does not move.
func TestSteadyStateWritesNothing(t *testing.T) {
	c := startManager(t)
	namespace(t, c, "steady-app", map[string]string{"steady": "yes"})
	createMesh(t, c, "steady", map[string]string{"steady": "yes"})
	m := meshCondition(t, c, "steady", meshv1alpha1.ConditionReady, metav1.ConditionTrue, meshv1alpha1.ReasonReady)
	time.Sleep(time.Second) // let any in-flight reconcile finish
	if err := c.Get(testCtx(t), client.ObjectKey{Name: "steady"}, m); err != nil {
		t.Fatal(err)
	}
	before := m.ResourceVersion

	namespace(t, c, "steady-unrelated", map[string]string{"unrelated": "yes"})
	for i := 0; i < 5; i++ {
		ns := &corev1.Namespace{}
		if err := c.Get(testCtx(t), client.ObjectKey{Name: "steady-unrelated"}, ns); err != nil {
			t.Fatal(err)
		}
		ns.Labels["round"] = fmt.Sprint(i)
		if err := c.Update(testCtx(t), ns); err != nil {
			t.Fatal(err)
		}
	}
	// Wait for the requeued reconciles: a marker namespace that joins the mesh proves the reconciler ran after
	// the label changes above; then remove it and wait for the count to drop back.
	namespace(t, c, "steady-marker", map[string]string{"steady": "yes"})
	eventually(t, "the marker joins", func() error {
		if err := c.Get(testCtx(t), client.ObjectKey{Name: "steady"}, m); err != nil {
			return err
		}
		if m.Status.MeshedNamespaces != 2 {
			return fmt.Errorf("meshedNamespaces = %d", m.Status.MeshedNamespaces)
		}
		return nil
	})
	afterMarker := m.ResourceVersion
	if afterMarker == before {
		t.Fatal("the marker namespace should have changed the status")
	}
	// Now touch the unrelated namespace again: the reconcile it triggers must not write.
	time.Sleep(time.Second)
	if err := c.Get(testCtx(t), client.ObjectKey{Name: "steady"}, m); err != nil {
		t.Fatal(err)
	}
	afterMarker = m.ResourceVersion
	count := reconciles(t)
	ns := &corev1.Namespace{}
	if err := c.Get(testCtx(t), client.ObjectKey{Name: "steady-unrelated"}, ns); err != nil {
		t.Fatal(err)
	}
	ns.Labels["round"] = "final"
	if err := c.Update(testCtx(t), ns); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a reconcile after the label change", func() error {
		if n := reconciles(t); n <= count {
			return fmt.Errorf("reconciles %v, before %v", n, count)
		}
		return nil
	})
	if err := c.Get(testCtx(t), client.ObjectKey{Name: "steady"}, m); err != nil {
		t.Fatal(err)
	}
	if m.ResourceVersion != afterMarker {
		t.Fatalf("an unchanged Mesh was written: resourceVersion %s -> %s, status %+v", afterMarker, m.ResourceVersion, m.Status)
	}
}
