package server

import (
	"fmt"
	"os"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// kube is the package's API server (etcd + kube-apiserver started by envtest), shared by the integration tests.
var kube struct {
	cfg     *rest.Config
	client  kubernetes.Interface
	certDir string // holds sa-signer.key, the API server's ServiceAccount token signing key
	skip    string // why the integration tests are skipped, when they are
}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		msg := "KUBEBUILDER_ASSETS is not set, so the tests that need a kube-apiserver cannot run; " +
			"run hack/k8s-bins.sh and set KUBEBUILDER_ASSETS to the folder it prints"
		if os.Getenv("CI") != "" {
			fmt.Fprintln(os.Stderr, "FAIL: "+msg)
			return 1
		}
		fmt.Fprintln(os.Stderr, "SKIP integration tests: "+msg)
		kube.skip = msg
		return m.Run()
	}
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: starting envtest:", err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}()
	kube.cfg = cfg
	kube.client = kubernetes.NewForConfigOrDie(cfg)
	kube.certDir = env.ControlPlane.GetAPIServer().CertDir
	return m.Run()
}

// needKube skips a test when no API server runs (and TestMain already failed the run in CI).
func needKube(t *testing.T) {
	t.Helper()
	if kube.client == nil {
		t.Skip(kube.skip)
	}
}
