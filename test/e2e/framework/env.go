// Package framework runs end-to-end suites on the test ground (hack/cluster): it starts the cluster or reuses a
// running one, builds and loads the images, installs Trellis through kustomize, and gives tests clients, waiting,
// command, HTTP, Prometheus and artifact helpers. The cluster's addresses are reachable from the host, so tests
// run as ordinary host processes (as root).
package framework

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Fixed addresses of the test ground (hack/cluster/lib.sh).
const (
	NetNS         = "trellis-node"
	NodeName      = "trellis-node"
	NodeIP        = "10.200.0.10"
	PrometheusURL = "http://10.200.0.10:9090"
	// KubeVersion is the Kubernetes release of the test ground (hack/k8s-bins.sh).
	KubeVersion = "v1.34.4"
	// ImageRepo prefixes every image the test ground builds: <ImageRepo>/<name>:dev.
	ImageRepo = "trellis.io"
	// FieldOwner is the server-side-apply field manager of objects the suites apply.
	FieldOwner = "trellis-e2e"
)

// Env is the test ground as the suites see it.
type Env struct {
	// Root is the repository's top folder.
	Root string
	// StateDir holds the cluster's PKI, configuration, data and component logs ($TRELLIS_CACHE/cluster).
	StateDir string
	// Kubeconfig is the admin kubeconfig; it works from the host and from the node's network namespace.
	Kubeconfig string
	// ArtifactsDir receives logs and object dumps when a test fails (test/e2e/artifacts, git-ignored).
	ArtifactsDir string
	// KubectlPath is the cluster's kubectl, from the machine's cache.
	KubectlPath string

	Config    *rest.Config
	Client    client.Client
	Clientset kubernetes.Interface
	Scheme    *runtime.Scheme

	// Trellis is what the suite installed from config/default, or nil when the tree has no config/default yet.
	Trellis *Install

	ownsCluster bool
	stopped     bool
	before      *HostState
}

// Options tune Setup. The zero value starts the cluster when needed and installs Trellis.
type Options struct {
	// KeepCluster leaves a cluster the suite started running at Teardown (env TRELLIS_E2E_KEEP_CLUSTER=1).
	KeepCluster bool
	// SkipInstall skips building images and installing Trellis.
	SkipInstall bool
}

// Setup makes the test ground ready: cluster up (started here if it was not running), images built and loaded,
// Trellis installed. Progress goes to stdout.
func Setup(ctx context.Context, opts Options) (*Env, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the e2e suites need root: they run a Kubernetes node in a network namespace")
	}
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	cache := os.Getenv("TRELLIS_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			base = filepath.Join(os.Getenv("HOME"), ".cache")
		}
		cache = filepath.Join(base, "trellis")
	}
	e := &Env{
		Root:         root,
		StateDir:     filepath.Join(cache, "cluster"),
		Kubeconfig:   filepath.Join(cache, "cluster", "kubeconfig"),
		ArtifactsDir: filepath.Join(root, "test", "e2e", "artifacts"),
		KubectlPath:  filepath.Join(cache, "k8s-"+KubeVersion, "kubectl"),
	}
	if os.Getenv("TRELLIS_E2E_KEEP_CLUSTER") == "1" {
		opts.KeepCluster = true
	}
	if err := e.script(ctx, "status.sh"); err != nil {
		logf("cluster not running: starting it (hack/cluster/up.sh)")
		if e.before, err = CaptureHostState(ctx, e.StateDir); err != nil {
			return nil, err
		}
		e.ownsCluster = !opts.KeepCluster
		if err := e.stream(ctx, "hack/cluster/up.sh"); err != nil {
			return e, fmt.Errorf("cluster-up: %w", err)
		}
	} else {
		logf("reusing the running cluster; it stays up after the suite")
	}
	if err := e.connect(); err != nil {
		return e, err
	}
	if opts.SkipInstall {
		return e, nil
	}
	if err := e.stream(ctx, "hack/cluster/images.sh", "project"); err != nil {
		return e, fmt.Errorf("images: %w", err)
	}
	e.Trellis, err = e.InstallTrellis(ctx)
	return e, err
}

// OwnsCluster reports whether the suite started the cluster and so stops it at the end.
func (e *Env) OwnsCluster() bool { return e.ownsCluster }

// HostStateBefore is the host's state captured before the suite started the cluster (nil if it did not).
func (e *Env) HostStateBefore() *HostState { return e.before }

// Teardown stops the cluster if the suite started it and it still runs.
func (e *Env) Teardown(ctx context.Context) error {
	if !e.ownsCluster {
		return nil
	}
	e.ownsCluster, e.stopped = false, true
	return e.stream(ctx, "hack/cluster/down.sh")
}

// ClusterDown runs `make cluster-down`; after it the cluster is gone and Stopped reports true.
func (e *Env) ClusterDown(ctx context.Context) error {
	e.ownsCluster, e.stopped = false, true
	return e.stream(ctx, "make", "--no-print-directory", "cluster-down")
}

// Stopped reports whether ClusterDown ran.
func (e *Env) Stopped() bool { return e.stopped }

func (e *Env) connect() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", e.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", e.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, cmv1.AddToScheme} {
		if err := add(s); err != nil {
			return err
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	e.Config, e.Client, e.Clientset, e.Scheme = cfg, c, cs, s
	return nil
}

func (e *Env) script(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(e.Root, "hack", "cluster", name), args...)
	cmd.Dir = e.Root
	return cmd.Run()
}

// stream runs a command in the repository with its output on stdout, so long steps show their progress.
func (e *Env) stream(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = e.Root
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	return cmd.Run()
}

func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/trellis-mesh/trellis\n") {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no github.com/trellis-mesh/trellis go.mod above %s", dir)
		}
	}
}

func logf(format string, args ...any) { fmt.Printf("e2e: "+format+"\n", args...) }
