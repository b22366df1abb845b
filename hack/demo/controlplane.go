package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/trellis-mesh/trellis/internal/testenv"
)

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

// runControlPlane demonstrates the control plane alone, without a cluster: a real kube-apiserver and etcd (built
// from source by hack/k8s-bins.sh) with the CRDs, cert-manager's controller, the manager binary, the samples in a
// meshed namespace, and what `kubectl get` and `kubectl describe` show, including the API server refusing a
// broken TrafficSplit. With keep it leaves everything running until interrupted.
func runControlPlane(keep bool) error {
	root := testenv.RepoRoot()
	work, err := os.MkdirTemp("", "trellis-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	step("Starting a real kube-apiserver %s and etcd with the Trellis and cert-manager CRDs", testenv.KubeVersion)
	crds := testenv.WithCertManagerCRDs()
	if len(crds) == 0 {
		return errors.New("cert-manager is not built: run hack/cluster/cert-manager.sh build (make demo does)")
	}
	env, err := testenv.Start(crds...)
	if err != nil {
		return err
	}
	if env.SkipReason != "" {
		return errors.New(env.SkipReason)
	}
	defer func() { _ = env.Stop() }()
	user, err := env.Environment.AddUser(envtest.User{Name: "demo-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kubeconfigData, err := user.KubeConfig()
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(work, "kubeconfig")
	if keep {
		kubeconfig = filepath.Join(os.TempDir(), "trellis-demo.kubeconfig")
	}
	if err := os.WriteFile(kubeconfig, kubeconfigData, 0o600); err != nil {
		return err
	}
	kubectl := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(testenv.AssetsDir(), "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	if out, err := kubectl("create", "namespace", "trellis-system"); err != nil {
		return fmt.Errorf("%w: %s", err, out)
	}
	step("Starting cert-manager %s's controller", testenv.CertManagerVersion)
	cm, err := env.StartCertManager("trellis-system")
	if err != nil {
		return err
	}
	defer cm.Stop()

	step("Building and starting the manager")
	manager := filepath.Join(work, "manager")
	build := exec.Command("go", "build", "-o", manager, "./cmd/manager")
	build.Dir, build.Stdout, build.Stderr = root, os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the manager: %w", err)
	}
	logPath := filepath.Join(work, "manager.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	mgr := exec.Command(manager, "--kubeconfig", kubeconfig, "--metrics-bind-address=0", "--health-probe-bind-address=127.0.0.1:0",
		"--identity-bind-address=127.0.0.1:0", "--enable-injection=false")
	mgr.Stdout, mgr.Stderr = logFile, logFile
	if err := mgr.Start(); err != nil {
		return err
	}
	defer func() {
		_ = mgr.Process.Signal(syscall.SIGTERM)
		_ = mgr.Wait()
	}()

	step("Creating namespace shop (labelled trellis.io/inject=enabled) and namespace legacy (not labelled)")
	for _, args := range [][]string{
		{"create", "namespace", "shop"},
		{"label", "namespace", "shop", "trellis.io/inject=enabled"},
		{"create", "namespace", "legacy"},
	} {
		if out, err := kubectl(args...); err != nil {
			return fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}

	step("Applying config/samples (a Mesh, a MeshPolicy and a TrafficSplit)")
	for _, f := range []string{"mesh_v1alpha1_mesh.yaml", "mesh_v1alpha1_meshpolicy.yaml", "mesh_v1alpha1_trafficsplit.yaml"} {
		out, err := kubectl("apply", "--server-side", "-n", "shop", "-f", filepath.Join(root, "config", "samples", f))
		fmt.Print(out)
		if err != nil {
			return err
		}
	}

	step("Applying a broken TrafficSplit (every weight 0): the API server refuses it")
	broken := filepath.Join(work, "broken.yaml")
	_ = os.WriteFile(broken, []byte("apiVersion: mesh.trellis.io/v1alpha1\nkind: TrafficSplit\nmetadata: {name: broken, namespace: shop}\n"+
		"spec: {service: web, backends: [{service: web-v1, weight: 0}, {service: web-v2, weight: 0}]}\n"), 0o600)
	out, err := kubectl("apply", "-f", broken)
	fmt.Print(out)
	if err == nil {
		return errors.New("the broken TrafficSplit was accepted")
	}

	step("Waiting for the manager to report the Mesh Ready")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		out, _ := kubectl("get", "mesh", "default", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if out == "True" {
			break
		}
		select {
		case <-ctx.Done():
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("the Mesh did not become Ready; manager log:\n%s", log)
		case <-time.After(300 * time.Millisecond):
		}
	}

	step("kubectl get mesh,meshpolicy,trafficsplit -A")
	out, _ = kubectl("get", "mesh,meshpolicy,trafficsplit", "-A")
	fmt.Print(out)
	step("kubectl describe mesh default")
	out, _ = kubectl("describe", "mesh", "default")
	fmt.Print(out)
	step("The identity chain cert-manager issued for the Mesh: kubectl get issuers,certificates -n trellis-system")
	out, _ = kubectl("get", "issuers,certificates", "-n", "trellis-system")
	fmt.Print(out)
	step("The trust bundle and proxy configuration in the meshed namespace shop (and none in legacy): kubectl get configmaps -A -l app.kubernetes.io/managed-by=trellis")
	out, _ = kubectl("get", "configmaps", "-A", "-l", "app.kubernetes.io/managed-by=trellis")
	fmt.Print(out)

	if keep {
		step("Everything keeps running. Try: kubectl --kubeconfig %s get mesh -o wide", kubeconfig)
		fmt.Println("Press Ctrl-C to stop.")
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
	}
	step("Stopping the manager, kube-apiserver and etcd")
	return nil
}
