// Package testenv starts a real kube-apiserver and etcd for integration tests (controller-runtime's envtest) with
// the binaries the project builds from source (hack/k8s-bins.sh), and installs the Trellis CRDs.
//
// A package's TestMain calls Start once; each test calls Require, which skips with the reason when the binaries
// are missing on a developer machine and fails when CI is set, so CI never passes without the real API server.
package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// KubeVersion is the Kubernetes version of the binaries the tests run against.
const KubeVersion = "v1.34.4"

// Env is a started API server.
type Env struct {
	// Environment is the envtest environment; nil when the binaries were not found.
	Environment *envtest.Environment
	// Config reaches the API server as an administrator.
	Config *rest.Config
	// SkipReason says why the environment could not start.
	SkipReason string
}

// RepoRoot returns the repository's root folder, found from this source file.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// AssetsDir returns the folder holding kube-apiserver and etcd: $KUBEBUILDER_ASSETS, else the project's cache
// (where hack/k8s-bins.sh puts them). It returns "" when neither holds the binaries.
func AssetsDir() string {
	candidates := []string{os.Getenv("KUBEBUILDER_ASSETS"), filepath.Join(cacheDir(), "k8s-"+KubeVersion)}
	for _, dir := range candidates {
		if dir == "" {
			continue
		}
		if isExec(filepath.Join(dir, "kube-apiserver")) && isExec(filepath.Join(dir, "etcd")) {
			return dir
		}
	}
	return ""
}

// cacheDir is the project's cache shared by every clone: $TRELLIS_CACHE, else $XDG_CACHE_HOME/trellis, else
// ~/.cache/trellis.
func cacheDir() string {
	if cache := os.Getenv("TRELLIS_CACHE"); cache != "" {
		return cache
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, _ := os.UserHomeDir()
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "trellis")
}

func isExec(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode()&0o111 != 0
}

// Start starts the API server and etcd with the Trellis CRDs (and extraCRDs, file or folder paths) installed. When
// the binaries are missing it returns an Env with SkipReason set instead of an error.
func Start(extraCRDs ...string) (*Env, error) {
	return StartWith(nil, extraCRDs...)
}

// StartWith is Start with configure applied to the envtest environment before it starts, for what must be known
// at start: WebhookInstallOptions (admission webhooks served by the test), API server flags. A nil configure
// changes nothing.
func StartWith(configure func(*envtest.Environment), extraCRDs ...string) (*Env, error) {
	dir := AssetsDir()
	if dir == "" {
		return &Env{SkipReason: "kube-apiserver and etcd not found: run `make test` or `hack/k8s-bins.sh` to build them, " +
			"or set KUBEBUILDER_ASSETS"}, nil
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: dir,
		CRDDirectoryPaths:     append([]string{filepath.Join(RepoRoot(), "config", "crd", "bases")}, extraCRDs...),
		ErrorIfCRDPathMissing: true,
	}
	if configure != nil {
		configure(env)
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w", dir, err)
	}
	return &Env{Environment: env, Config: cfg}, nil
}

// Stop stops the API server and etcd.
func (e *Env) Stop() error {
	if e == nil || e.Environment == nil {
		return nil
	}
	return e.Environment.Stop()
}

// Require skips the test when the environment did not start, or fails it when CI is set.
func (e *Env) Require(t testing.TB) {
	t.Helper()
	if e != nil && e.Environment != nil && e.SkipReason == "" {
		return
	}
	reason := "no API server"
	if e != nil {
		reason = e.SkipReason
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("integration test cannot run in CI: %s", reason)
	}
	t.Skip(reason)
}

// Main runs a package's tests around one started environment and exits with their result. It is the body of a
// TestMain: env receives the environment before the tests run.
func Main(m *testing.M, env **Env, extraCRDs ...string) {
	MainWithSetup(m, env, nil, extraCRDs...)
}

// MainWithSetup is Main with a setup step that runs once the API server is up (to start more components); the
// function it returns runs after the tests. A setup error makes the tests skip with that reason (fail in CI).
func MainWithSetup(m *testing.M, env **Env, setup func(*Env) (teardown func(), err error), extraCRDs ...string) {
	MainWithOptions(m, env, Options{Setup: setup, ExtraCRDs: extraCRDs})
}

// Options shape the environment MainWithOptions starts.
type Options struct {
	// Configure changes the envtest environment before it starts (see StartWith). Default: nil, no change.
	Configure func(*envtest.Environment)
	// Setup runs once the API server is up, as in MainWithSetup. Default: nil, nothing to set up.
	Setup func(*Env) (teardown func(), err error)
	// ExtraCRDs are CRD files or folders installed besides the Trellis CRDs. Default: none.
	ExtraCRDs []string
}

// MainWithOptions is MainWithSetup with the environment configured before it starts.
func MainWithOptions(m *testing.M, env **Env, o Options) {
	setup, extraCRDs := o.Setup, o.ExtraCRDs
	e, err := StartWith(o.Configure, extraCRDs...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	teardown := func() {}
	if e.SkipReason == "" {
		v := e.Environment.ControlPlane.APIServer
		fmt.Fprintf(os.Stderr, "started kube-apiserver %s at %s\n", KubeVersion, v.SecureServing.URL("https", "/"))
		if setup != nil {
			if td, err := setup(e); err != nil {
				e.SkipReason = err.Error()
			} else if td != nil {
				teardown = td
			}
		}
	}
	if e.SkipReason != "" {
		fmt.Fprintln(os.Stderr, "integration tests will skip (fail when CI is set):", e.SkipReason)
	}
	*env = e
	code := m.Run()
	teardown()
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the API server:", err)
	}
	os.Exit(code)
}

// CertManagerVersion is the cert-manager release the tests run (its controller is built by
// hack/cluster/cert-manager.sh build).
const CertManagerVersion = "v1.11.5"

// CertManagerDir returns the folder holding cert-manager's controller binary and crds.yaml, or "" when they have
// not been built.
func CertManagerDir() string {
	dir := filepath.Join(cacheDir(), "cert-manager-"+CertManagerVersion)
	if isExec(filepath.Join(dir, "controller")) && fileExists(filepath.Join(dir, "crds.yaml")) {
		return dir
	}
	return ""
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
