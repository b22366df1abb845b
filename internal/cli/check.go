package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// checkOptions are the flags of trellis check.
type checkOptions struct {
	kubeconfig, context string
	namespace           string
	pre                 bool
	timeout             time.Duration
	expiryWarning       time.Duration
}

func newCheckCommand() *cobra.Command {
	o := &checkOptions{}
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that the mesh is installed and healthy, and that every proxy runs the configuration the manager rendered",
		Long: `check verifies, in order, and prints one line per check:

  the API server answers; the Trellis CRDs are established; cert-manager's CRDs are served (--pre stops here:
  what an installation needs); the manager Deployment is available; every Mesh is Ready (its first failing
  condition otherwise, with its message); trust anchors and identity issuers are not about to expire; and, for
  every meshed pod, that its proxy is ready and reports on /config the configuration hash the Mesh's status
  records (read through the API server's pod proxy).

It exits with status 1 when a check fails.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			failed, err := runCheck(ctx, cmd.OutOrStdout(), o)
			if err != nil {
				return err
			}
			if failed > 0 {
				return fmt.Errorf("%d check(s) failed", failed)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.kubeconfig, "kubeconfig", "", "Path of the kubeconfig (default: $KUBECONFIG, then ~/.kube/config).")
	cmd.Flags().StringVar(&o.context, "context", "", "kubeconfig context to use (default: the current one).")
	cmd.Flags().StringVarP(&o.namespace, "namespace", "n", "trellis-system", "Namespace of the Trellis manager.")
	cmd.Flags().BoolVar(&o.pre, "pre", false, "Only check what an installation needs (API server, CRDs, cert-manager).")
	cmd.Flags().DurationVar(&o.timeout, "timeout", time.Minute, "Give up after this long.")
	cmd.Flags().DurationVar(&o.expiryWarning, "expiry-warning", 24*time.Hour, "Fail when a trust anchor or identity issuer expires sooner than this.")
	return cmd
}

// checker prints check results and counts failures.
type checker struct {
	out    io.Writer
	failed int
}

func (c *checker) ok(format string, args ...any) { fmt.Fprintf(c.out, "✔ "+format+"\n", args...) }

func (c *checker) fail(format string, args ...any) {
	c.failed++
	fmt.Fprintf(c.out, "✘ "+format+"\n", args...)
}

func runCheck(ctx context.Context, out io.Writer, o *checkOptions) (int, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.context}).ClientConfig()
	if err != nil {
		return 0, fmt.Errorf("reading the kubeconfig: %w", err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, meshv1alpha1.AddToScheme} {
		if err := add(scheme); err != nil {
			return 0, err
		}
	}
	kc, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return 0, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return 0, err
	}
	c := &checker{out: out}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		c.fail("the API server at %s does not answer: %v", cfg.Host, err)
		return c.failed, nil
	}
	c.ok("the API server at %s answers (Kubernetes %s)", cfg.Host, v.GitVersion)
	checkCRDs(ctx, c, kc)
	if o.pre || c.failed > 0 {
		return c.failed, nil
	}
	checkManager(ctx, c, kc, o.namespace)
	var meshes meshv1alpha1.MeshList
	if err := kc.List(ctx, &meshes); err != nil {
		c.fail("listing meshes: %v", err)
		return c.failed, nil
	}
	if len(meshes.Items) == 0 {
		c.fail("there is no Mesh: create one (kubectl apply -f config/samples/mesh_v1alpha1_mesh.yaml)")
	}
	for i := range meshes.Items {
		checkMesh(ctx, c, kc, cs, &meshes.Items[i], o.expiryWarning)
	}
	return c.failed, nil
}

func checkCRDs(ctx context.Context, c *checker, kc client.Client) {
	for _, name := range []string{"meshes.mesh.trellis.io", "meshpolicies.mesh.trellis.io", "trafficsplits.mesh.trellis.io",
		"certificates.cert-manager.io", "issuers.cert-manager.io"} {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := kc.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
			hint := "install Trellis (kubectl apply --server-side -k config/default)"
			if strings.HasSuffix(name, "cert-manager.io") {
				hint = "install cert-manager first"
			}
			c.fail("CRD %s is missing: %s", name, hint)
			continue
		}
		established := false
		for _, cond := range crd.Status.Conditions {
			established = established || (cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue)
		}
		if !established {
			c.fail("CRD %s is not established yet", name)
			continue
		}
		c.ok("CRD %s is established", name)
	}
}

func checkManager(ctx context.Context, c *checker, kc client.Client, namespace string) {
	var deps appsv1.DeploymentList
	if err := kc.List(ctx, &deps, client.InNamespace(namespace), client.MatchingLabels{"app.kubernetes.io/component": "manager"}); err != nil || len(deps.Items) == 0 {
		c.fail("no manager Deployment in namespace %s (labelled app.kubernetes.io/component=manager): %v", namespace, err)
		return
	}
	d := &deps.Items[0]
	if d.Status.AvailableReplicas < 1 {
		c.fail("the manager Deployment %s/%s has no available replica: kubectl -n %s describe deployment %s", namespace, d.Name, namespace, d.Name)
		return
	}
	c.ok("the manager Deployment %s/%s is available (%d/%d)", namespace, d.Name, d.Status.AvailableReplicas, d.Status.Replicas)
}

func checkMesh(ctx context.Context, c *checker, kc client.Client, cs kubernetes.Interface, m *meshv1alpha1.Mesh, warn time.Duration) {
	ready := meta.FindStatusCondition(m.Status.Conditions, meshv1alpha1.ConditionReady)
	switch {
	case m.Status.ObservedGeneration != m.Generation:
		c.fail("Mesh %s: the manager has not reconciled generation %d yet (status describes %d)", m.Name, m.Generation, m.Status.ObservedGeneration)
	case ready == nil:
		c.fail("Mesh %s has no Ready condition: is the manager running?", m.Name)
	case ready.Status != metav1.ConditionTrue:
		c.fail("Mesh %s is not Ready: %s: %s", m.Name, ready.Reason, ready.Message)
	default:
		c.ok("Mesh %s is Ready: %d namespace(s), proxies %s", m.Name, m.Status.MeshedNamespaces, m.Status.Proxies.Summary)
	}
	for what, t := range map[string]*metav1.Time{"trust anchor": m.Status.TrustAnchorExpiry, "identity issuer": m.Status.IssuerExpiry} {
		if t == nil {
			continue
		}
		if left := time.Until(t.Time); left < warn {
			c.fail("Mesh %s: the %s expires in %s (at %s)", m.Name, what, left.Round(time.Minute), t.UTC().Format(time.RFC3339))
		} else {
			c.ok("Mesh %s: the %s is valid until %s", m.Name, what, t.UTC().Format(time.RFC3339))
		}
	}
	checkProxies(ctx, c, kc, cs, m)
}

// proxyConfig is the part of a proxy's /config answer check reads.
type proxyConfig struct {
	Version string `json:"version"`
	Hash    string `json:"hash"`
}

// checkProxies compares every meshed pod's running configuration hash with the one the Mesh's status records.
func checkProxies(ctx context.Context, c *checker, kc client.Client, cs kubernetes.Interface, m *meshv1alpha1.Mesh) {
	var pods corev1.PodList
	if err := kc.List(ctx, &pods, client.MatchingLabels{wellknown.LabelProxy: wellknown.ProxySidecar}); err != nil {
		c.fail("listing meshed pods: %v", err)
		return
	}
	var stale, unready, unreachable []string
	current := 0
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Annotations[wellknown.AnnotationInjected] != m.Name || p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		name := p.Namespace + "/" + p.Name
		raw, err := cs.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, fmt.Sprint(wellknown.AdminPort), "/config", nil).DoRaw(ctx)
		if err != nil {
			unreachable = append(unreachable, name)
			continue
		}
		var pc proxyConfig
		if json.Unmarshal(raw, &pc) != nil {
			unreachable = append(unreachable, name)
			continue
		}
		if pc.Hash != m.Status.ConfigHash {
			stale = append(stale, fmt.Sprintf("%s (runs %s)", name, short(pc.Hash)))
			continue
		}
		if _, err := cs.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, fmt.Sprint(wellknown.AdminPort), "/ready", nil).DoRaw(ctx); err != nil {
			unready = append(unready, name)
			continue
		}
		current++
	}
	sort.Strings(stale)
	if len(unreachable) > 0 {
		c.fail("Mesh %s: %d proxy admin endpoint(s) do not answer: %s", m.Name, len(unreachable), list(unreachable))
	}
	if len(unready) > 0 {
		c.fail("Mesh %s: %d proxy(ies) not ready: %s", m.Name, len(unready), list(unready))
	}
	if len(stale) > 0 {
		c.fail("Mesh %s: %d proxy(ies) run another configuration than %s: %s (the kubelet or the proxy's watch has not caught up, or a document was refused: see the proxy's log and config_reload_total)",
			m.Name, len(stale), short(m.Status.ConfigHash), list(stale))
	}
	if len(unreachable)+len(unready)+len(stale) == 0 {
		c.ok("Mesh %s: all %d running proxies are ready and run configuration %s", m.Name, current, short(m.Status.ConfigHash))
	}
}

func short(hash string) string {
	if len(hash) > 19 {
		return hash[:19]
	}
	return hash
}

func list(items []string) string {
	if len(items) > 5 {
		return strings.Join(items[:5], ", ") + fmt.Sprintf(" and %d more", len(items)-5)
	}
	return strings.Join(items, ", ")
}
