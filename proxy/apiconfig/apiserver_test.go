package apiconfig

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/internal/render"
	"github.com/trellis-mesh/trellis/internal/testenv"
	"github.com/trellis-mesh/trellis/internal/wellknown"
	"github.com/trellis-mesh/trellis/proxy/reload"
)

var env *testenv.Env

// TestMain starts the API server with etcd compacting its history every two seconds and ConfigMap watches served
// by etcd (no watch cache), so a watch from an old resource version meets a real 410 Gone. (A watch cache answers
// 410 only once it dropped events newer than the version, which takes minutes of traffic.)
func TestMain(m *testing.M) {
	testenv.MainWithOptions(m, &env, testenv.Options{Configure: func(e *envtest.Environment) {
		args := e.ControlPlane.GetAPIServer().Configure()
		args.Set("etcd-compaction-interval", "2s")
		args.Set("watch-cache-sizes", "configmaps#0")
	}})
}

var testMesh = &meshv1alpha1.Mesh{ObjectMeta: metav1.ObjectMeta{Name: "default", UID: "0b5e5c1e-0000-4000-8000-0000000000aa"}}

// namespace is a meshed namespace on the real API server with the operator's Role and RoleBinding for proxies, and a
// ServiceAccount whose token (from the TokenRequest API) the proxy presents.
type namespace struct {
	name    string
	cs      *kubernetes.Clientset
	options Options // reaches the API server as the ServiceAccount
}

func newNamespace(t *testing.T) *namespace {
	t.Helper()
	env.Require(t)
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "shop-"}}
	if ns, err = cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := &namespace{name: ns.Name, cs: cs}
	for _, obj := range render.ProxyConfigReader(testMesh, n.name) {
		switch o := obj.(type) {
		case *rbacv1.Role:
			_, err = cs.RbacV1().Roles(n.name).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = cs.RbacV1().RoleBindings(n.name).Create(ctx, o, metav1.CreateOptions{})
		default:
			err = fmt.Errorf("unexpected %T", obj)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}
	if _, err := cs.CoreV1().ServiceAccounts(n.name).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(n.name).CreateToken(ctx, "web", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile, caFile := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, env.Config.CAData, 0o644); err != nil {
		t.Fatal(err)
	}
	n.options = Options{Host: env.Config.Host, TokenFile: tokenFile, CAFile: caFile, Namespace: n.name,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), n.name, metav1.DeleteOptions{})
	})
	return n
}

// apply writes the configuration's ConfigMaps as the operator renders them: shards[i] is the data of the i-th
// ConfigMap, all annotated with hash.
func (n *namespace) apply(t *testing.T, hash string, shards ...map[string]string) {
	t.Helper()
	ctx := context.Background()
	for _, cm := range render.ProxyConfigMaps(testMesh, n.name, shards, hash) {
		cur, err := n.cs.CoreV1().ConfigMaps(n.name).Get(ctx, cm.Name, metav1.GetOptions{})
		switch {
		case err == nil:
			cur.Data, cur.Annotations = cm.Data, cm.Annotations
			_, err = n.cs.CoreV1().ConfigMaps(n.name).Update(ctx, cur, metav1.UpdateOptions{})
		case strings.Contains(err.Error(), "not found"):
			_, err = n.cs.CoreV1().ConfigMaps(n.name).Create(ctx, cm, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

var serviceIPs = map[string]int{"web": 1, "cart": 2, "orders": 3}

func document(version string, services ...string) string {
	var svcs []string
	for _, s := range services {
		svcs = append(svcs, fmt.Sprintf(`{"name": %q, "namespace": "shop", "clusterIPs": ["10.96.0.%d"], "port": 80,
		  "backends": [{"name": %q}]}`, s, serviceIPs[s], s))
	}
	return fmt.Sprintf(`{"apiVersion": %q, "version": %q, "services": [%s]}`, proxyconfig.APIVersion, version,
		strings.Join(svcs, ","))
}

func (n *namespace) start(t *testing.T, fx *fixture) *Source {
	t.Helper()
	o := n.options
	o.Pipeline, o.Log = fx.pipe, fx.log
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAPIServerUpdates checks that the source loads the configuration through the API with a ServiceAccount token
// and the operator's Role, that updates arrive, that a broken document keeps the last good one (counted), and
// measures the delay from an update to the new snapshot.
func TestAPIServerUpdates(t *testing.T) {
	verifySourcesStopped(t)
	n := newNamespace(t)
	n.apply(t, "h0", map[string]string{"config.json": document("v0", "web")})
	fx := newFixture()
	run(t, n.start(t, fx))
	waitFor(t, 10*time.Second, "the first configuration", func() bool { return fx.version() == "v0" })

	const updates = 30
	var delays []time.Duration
	for i := 1; i <= updates; i++ {
		version := fmt.Sprintf("v%d", i)
		start := time.Now()
		n.apply(t, "h"+version, map[string]string{"config.json": document(version, "web")})
		waitFor(t, 10*time.Second, version, func() bool { return fx.version() == version })
		delays = append(delays, time.Since(start))
	}
	slices.Sort(delays)
	t.Logf("ConfigMap update to new snapshot over %d updates: min %v, median %v, p90 %v, max %v (settle %v)",
		updates, delays[0].Round(time.Millisecond), delays[updates/2].Round(time.Millisecond),
		delays[updates*9/10].Round(time.Millisecond), delays[updates-1].Round(time.Millisecond),
		50*time.Millisecond)

	good := fx.store.Load()
	n.apply(t, "hbad", map[string]string{"config.json": `{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "bad", "bogus": 1}`})
	waitFor(t, 10*time.Second, "the broken document refused", func() bool {
		return strings.Contains(gatherText(t, fx), `config_reload_total{result="failure",source="api"} 1`)
	})
	if fx.store.Load() != good {
		t.Fatalf("a broken document replaced the running configuration: %s", fx.version())
	}
	n.apply(t, "hfixed", map[string]string{"config.json": document("fixed", "web")})
	waitFor(t, 10*time.Second, "the fixed document", func() bool { return fx.version() == "fixed" })
}

// TestAPIServerShards checks that the shards of two ConfigMaps are merged like the mounted volume's, that the
// second ConfigMap is found when the configuration grows, and that it is dropped when the configuration shrinks.
func TestAPIServerShards(t *testing.T) {
	verifySourcesStopped(t)
	n := newNamespace(t)
	n.apply(t, "h1", map[string]string{"config.json": document("1", "web")})
	fx := newFixture()
	run(t, n.start(t, fx))
	waitFor(t, 10*time.Second, "version 1", func() bool { return fx.version() == "1" })

	n.apply(t, "h2", map[string]string{"config-000.json": document("2", "web")},
		map[string]string{"config-001.json": document("2", "cart", "orders")})
	waitFor(t, 10*time.Second, "version 2 from two ConfigMaps", func() bool { return fx.version() == "2" })
	s := fx.store.Load()
	if want := []string{"trellis-proxy-config/config-000.json", "trellis-proxy-config-1/config-001.json"}; !slices.Equal(s.Source, want) {
		t.Errorf("files %v, want %v", s.Source, want)
	}
	if s.Service(netip.MustParseAddrPort("10.96.0.2:80")) == nil {
		t.Error("the second ConfigMap's services are missing")
	}

	// Back to one ConfigMap: the operator rewrites the first and deletes the second.
	n.apply(t, "h3", map[string]string{"config.json": document("3", "web")})
	if err := n.cs.CoreV1().ConfigMaps(n.name).Delete(context.Background(), wellknown.ProxyConfigName+"-1",
		metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "version 3 from one ConfigMap", func() bool { return fx.version() == "3" })
}

// TestAPIServerRBAC checks that the Role the operator renders lets the ServiceAccount read exactly the configuration
// ConfigMaps: another ConfigMap of the namespace, and the configuration of another namespace, are forbidden.
func TestAPIServerRBAC(t *testing.T) {
	verifySourcesStopped(t)
	n := newNamespace(t)
	other := newNamespace(t)
	n.apply(t, "h", map[string]string{"config.json": document("1", "web")})
	other.apply(t, "h", map[string]string{"config.json": document("1", "web")})
	ctx := context.Background()
	secret := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "app-settings"}, Data: map[string]string{"k": "v"}}
	if _, err := n.cs.CoreV1().ConfigMaps(n.name).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := newClient(n.options.Host, n.name, n.options.TokenFile, n.options.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if cm, _, err := c.get(ctx, wellknown.ProxyConfigName); err != nil || cm == nil {
		t.Fatalf("reading %s: %v %v", wellknown.ProxyConfigName, cm, err)
	}
	forbidden := func(what string, err error) {
		t.Helper()
		var ae *APIError
		if !errors.As(err, &ae) || ae.Code != 403 {
			t.Errorf("%s: %v, want 403 Forbidden", what, err)
		}
	}
	_, _, err = c.get(ctx, "app-settings")
	forbidden("another ConfigMap", err)
	next, stop, err := c.watch(ctx, "app-settings", "", time.Minute)
	if err == nil {
		stop()
		_ = next
	}
	forbidden("watching another ConfigMap", err)
	otherNS, err := newClient(n.options.Host, other.name, n.options.TokenFile, n.options.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	defer otherNS.close()
	_, _, err = otherNS.get(ctx, wellknown.ProxyConfigName)
	forbidden("another namespace's configuration", err)

	// A source told to read a ConfigMap the Role does not name never loads it and says so.
	fx := newFixture()
	o := n.options
	o.Names, o.Pipeline, o.Log = []string{"app-settings"}, fx.pipe, fx.log
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, s)
	waitFor(t, 10*time.Second, "the refusal logged", func() bool { return strings.Contains(fx.logs.String(), "403") })
	if fx.version() != "" {
		t.Errorf("loaded %s from a forbidden ConfigMap", fx.version())
	}
}

// TestAPIServerExpiredWatch starts a watch from a resource version etcd has compacted away: the API server answers
// 410 Gone (an expired version) and the source lists again and loads the configuration.
func TestAPIServerExpiredWatch(t *testing.T) {
	verifySourcesStopped(t)
	n := newNamespace(t)
	n.apply(t, "h1", map[string]string{"config.json": document("1", "web")})
	c, err := newClient(n.options.Host, n.name, n.options.TokenFile, n.options.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	waitFor(t, 30*time.Second, "resource version 1 compacted", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		next, stop, err := c.watch(ctx, wellknown.ProxyConfigName, "1", time.Minute)
		if err == nil {
			defer stop()
			var ev watchEvent
			if ev, err = next(); err == nil && ev.Type != "ERROR" {
				return false // the version is still there: an event was replayed
			} else if err == nil {
				err = eventStatus(ev.Object)
			}
		}
		return isGone(err)
	})
	fx := newFixture()
	s := n.start(t, fx)
	s.startRV = "1"
	run(t, s)
	waitFor(t, 10*time.Second, "version 1", func() bool { return fx.version() == "1" })
	if !strings.Contains(fx.logs.String(), "Configuration watch expired; listing again") {
		t.Errorf("the expired watch was not noticed:\n%s", fx.logs)
	}
	n.apply(t, "h2", map[string]string{"config.json": document("2", "web")})
	waitFor(t, 10*time.Second, "version 2", func() bool { return fx.version() == "2" })
}

// TestAPIServerVolumeFallback checks the precedence between the API and the mounted volume in one pipeline: while
// the watch is synced, an older volume is ignored; when the API server refuses the proxy (RBAC removed), a new
// version in the volume is loaded.
func TestAPIServerVolumeFallback(t *testing.T) {
	verifySourcesStopped(t)
	n := newNamespace(t)
	n.apply(t, "h2", map[string]string{"config.json": document("2", "web")})
	n.options.WatchTimeout = 2 * time.Second // the watch is renewed, and refused, soon after the RBAC change
	fx := newFixture()
	dir := t.TempDir()
	writeVolume := func(version string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(document(version, "web")), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	volume := &reload.Watcher{Dir: dir, Pipeline: fx.pipe}
	writeVolume("1")
	if res, err := volume.Reload(); res != reload.Success {
		t.Fatal(res, err)
	}
	run(t, n.start(t, fx))
	waitFor(t, 10*time.Second, "the API's version 2", func() bool { return fx.version() == "2" })
	writeVolume("1b") // the kubelet's copy differs: the synced watch wins
	if res, _ := volume.Reload(); res != reload.Stale || fx.version() != "2" {
		t.Errorf("volume while the watch is synced: %s, running %s", res, fx.version())
	}
	// The RoleBinding goes away: the watch fails and the volume becomes the source.
	if err := n.cs.RbacV1().RoleBindings(n.name).Delete(context.Background(), wellknown.ProxyConfigReaderName,
		metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The running watch lives on until it ends; a new ConfigMap version makes no difference to a refused proxy.
	n.apply(t, "h3", map[string]string{"config.json": document("3", "web")})
	waitFor(t, 10*time.Second, "version 3 or a refusal", func() bool {
		return fx.version() == "3" || strings.Contains(fx.logs.String(), "403")
	})
	writeVolume("4")
	waitFor(t, 20*time.Second, "the volume's version 4 once the watch is refused", func() bool {
		_, _ = volume.Reload()
		return fx.version() == "4"
	})
}

// verifySourcesStopped checks, after every other cleanup of the test, that no goroutine of this package is left. The
// clients of the API server keep idle connections, so goleak's whole-process view does not fit here.
func verifySourcesStopped(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		var stacks string
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			buf := make([]byte, 1<<20)
			stacks = string(buf[:runtime.Stack(buf, true)])
			left := false
			for _, g := range strings.Split(stacks, "\n\n") {
				if strings.Contains(g, "proxy/apiconfig.(*") && !strings.Contains(g, "testing.tRunner") {
					left = true
				}
			}
			if !left {
				return
			}
		}
		t.Errorf("goroutines of the source are left:\n%s", stacks)
	})
}

func gatherText(t *testing.T, fx *fixture) string {
	t.Helper()
	mfs, err := fx.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			fmt.Fprintf(&b, "%s{%s} %v\n", mf.GetName(), strings.Join(ls, ","), m.GetCounter().GetValue())
		}
	}
	return b.String()
}

// TestNamesMatchTheOperator checks the names and annotation the source relies on against what the operator renders.
func TestNamesMatchTheOperator(t *testing.T) {
	if AnnotationConfigHash != render.AnnotationConfigHash {
		t.Errorf("annotation %s, the operator writes %s", AnnotationConfigHash, render.AnnotationConfigHash)
	}
	for _, obj := range render.ProxyConfigReader(testMesh, "shop") {
		if role, ok := obj.(*rbacv1.Role); ok && !slices.Equal(role.Rules[0].ResourceNames, Names()) {
			t.Errorf("the Role names %v, the source watches %v", role.Rules[0].ResourceNames, Names())
		}
	}
}
