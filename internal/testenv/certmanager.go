package testenv

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// WithCertManagerCRDs returns the extra CRD path for Start when cert-manager has been built, or nothing.
func WithCertManagerCRDs() []string {
	if dir := CertManagerDir(); dir != "" {
		return []string{filepath.Join(dir, "crds.yaml")}
	}
	return nil
}

// CertManager is cert-manager's real controller running as a process against the test API server.
type CertManager struct {
	cmd     *exec.Cmd
	logPath string
	work    string
}

// StartCertManager runs cert-manager's controller against the API server. The API server must have been started
// with WithCertManagerCRDs. It fails when cert-manager has not been built (see CertManagerDir).
func (e *Env) StartCertManager(clusterResourceNamespace string) (*CertManager, error) {
	if e == nil || e.Environment == nil {
		return nil, errors.New("no API server")
	}
	dir := CertManagerDir()
	if dir == "" {
		return nil, errors.New("cert-manager " + CertManagerVersion + " not built: run hack/cluster/cert-manager.sh build")
	}
	user, err := e.Environment.AddUser(envtest.User{Name: "cert-manager", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, err
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "cert-manager-")
	if err != nil {
		return nil, err
	}
	kubeconfigPath := filepath.Join(work, "kubeconfig")
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		return nil, err
	}
	cm := &CertManager{logPath: filepath.Join(work, "cert-manager.log"), work: work}
	logFile, err := os.Create(cm.logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	metricsAddr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	cm.cmd = exec.Command(filepath.Join(dir, "controller"),
		"--kubeconfig="+kubeconfigPath,
		"--leader-elect=false",
		"--cluster-resource-namespace="+clusterResourceNamespace,
		"--metrics-listen-address="+metricsAddr,
		"--v=2",
	)
	cm.cmd.Stdout, cm.cmd.Stderr = logFile, logFile
	cm.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cm.cmd.Start(); err != nil {
		return nil, err
	}
	return cm, nil
}

// Log returns the controller's log so far.
func (cm *CertManager) Log() string {
	data, _ := os.ReadFile(cm.logPath)
	return string(data)
}

// Stop stops the controller (SIGTERM, then SIGKILL after 10 s) and removes its files.
func (cm *CertManager) Stop() {
	if cm == nil || cm.cmd == nil {
		return
	}
	_ = cm.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cm.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cm.cmd.Process.Kill()
		<-done
	}
	_ = os.RemoveAll(cm.work)
}

// freeLoopbackAddr returns a loopback address with a port that was free a moment ago.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// WithGatewayAPICRDs returns the path of the Gateway API HTTPRoute CRD (standard channel) of the version the
// module requires, from the Go module cache (`go list -m`), or nothing when it cannot be found.
func WithGatewayAPICRDs() []string {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api")
	cmd.Dir = RepoRoot()
	out, err := cmd.Output()
	if err != nil {
		return nil
	}
	path := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "standard", "gateway.networking.k8s.io_httproutes.yaml")
	if !fileExists(path) {
		return nil
	}
	return []string{path}
}
