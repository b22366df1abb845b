package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/trellis-mesh/trellis/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env, testenv.WithCertManagerCRDs()...) }

// runCheckCommand runs `trellis check` with args against the test API server.
func runCheckCommand(t *testing.T, args ...string) (string, error) {
	t.Helper()
	env.Require(t)
	user, err := env.Environment.AddUser(envtest.User{Name: "check", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := NewRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"check", "--kubeconfig", path, "--timeout", "30s"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = cmd.ExecuteContext(ctx)
	return out.String(), err
}

func TestCheckPreInstall(t *testing.T) {
	out, err := runCheckCommand(t, "--pre")
	if err != nil {
		t.Fatalf("pre-install checks failed on an API server with the CRDs and cert-manager's: %v\n%s", err, out)
	}
	for _, want := range []string{"✔ the API server", "✔ CRD meshes.mesh.trellis.io is established", "✔ CRD certificates.cert-manager.io is established"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestCheckReportsWhatIsMissing(t *testing.T) {
	out, err := runCheckCommand(t)
	if err == nil {
		t.Fatalf("check passed without a manager or a Mesh:\n%s", out)
	}
	for _, want := range []string{"✘ no manager Deployment in namespace trellis-system", "✘ there is no Mesh: create one"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
