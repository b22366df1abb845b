package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/trellis-mesh/trellis/internal/identity/server"
	"github.com/trellis-mesh/trellis/internal/wellknown"
	"github.com/trellis-mesh/trellis/proxy"
)

// The helper is the test binary run again inside the node's network namespace (nsenter --net): the identity
// service on 127.0.0.1:8443 (Secrets and pods in a fake clientset, TokenReviews answered for the node proxy's token
// with its node) and the node proxy, whose pods come from the file pods.json.
const (
	helperEnv       = "TRELLIS_NODE_HELPER"
	helperNode      = "node-1"
	helperIdentity  = "127.0.0.1:8443"
	helperAdmin     = "127.0.0.1:4191"
	identityDNSName = "trellis-identity.trellis-system.svc"
	nodeProxySA     = "trellis-system:mesh-node-proxy"
	nodeProxyToken  = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2RlLXByb3h5In0.c2ln" // a JWT-shaped token the fake review knows
)

func runHelper(dir string) int {
	// The fake clientset cannot stream a watch's initial list; client-go reads this gate on first use.
	_ = os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fail := func(err error) int {
		log.Error("Helper failed", "error", err)
		return 1
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			log.Error("Helper cannot read its files", "error", err)
			os.Exit(1)
		}
		return b
	}
	var pods []Pod
	if err := json.Unmarshal(read("pods.json"), &pods); err != nil {
		return fail(err)
	}
	issuer := types.NamespacedName{Namespace: "trellis-system", Name: "issuer"}
	serving := types.NamespacedName{Namespace: "trellis-system", Name: "serving"}
	secret := func(n types.NamespacedName, prefix string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: n.Namespace, Name: n.Name}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"tls.crt": read(prefix + ".crt"), "tls.key": read(prefix + ".key"), "ca.crt": read("ca.crt")}}
	}
	objects := []runtime.Object{secret(issuer, "issuer"), secret(serving, "serving")}
	for _, p := range pods {
		objects = append(objects, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: types.UID(p.UID), Labels: p.Labels},
			Spec:       corev1.PodSpec{NodeName: p.NodeName, ServiceAccountName: p.ServiceAccount},
			Status:     corev1.PodStatus{Phase: corev1.PodPhase(p.Phase)},
		})
	}
	ns, name, _ := strings.Cut(nodeProxySA, ":")
	srv, err := server.New(server.Options{
		Client:        fake.NewClientset(objects...),
		TokenReviewer: nodeReviewer{},
		TrustDomain:   "cluster.local",
		IssuerSecret:  issuer,
		ServingSecret: serving,
		Addr:          helperIdentity,
		NodeProxy:     types.NamespacedName{Namespace: ns, Name: name},
	})
	if err != nil {
		return fail(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wg.Go(func() { _ = srv.Start(ctx) })
	err = Run(context.Background(), Options{
		Proxy: proxy.RunOptions{
			AdminAddr:          helperAdmin,
			ConfigDir:          filepath.Join(dir, "config"),
			ConfigSource:       proxy.ConfigSourceVolume,
			PollInterval:       50 * time.Millisecond,
			GracePeriod:        2 * time.Second,
			DetectTimeout:      200 * time.Millisecond,
			Log:                log,
			IdentityAddr:       helperIdentity,
			IdentityServerName: identityDNSName,
			TrustDomain:        "cluster.local",
			TokenFile:          filepath.Join(dir, "token"),
			TrustBundleFile:    filepath.Join(dir, "ca.crt"),
			PodNamespace:       "trellis-system",
		},
		NodeName:        helperNode,
		Pods:            &fileSource{path: filepath.Join(dir, "pods.json"), log: log},
		RecheckInterval: 500 * time.Millisecond,
	})
	if err != nil {
		return fail(err)
	}
	return 0
}

// nodeReviewer authenticates nodeProxyToken as the node proxy's ServiceAccount, bound to a pod on helperNode.
type nodeReviewer struct{}

func (nodeReviewer) Create(_ context.Context, r *authenticationv1.TokenReview, _ metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	out := r.DeepCopy()
	if r.Spec.Token != nodeProxyToken {
		out.Status = authenticationv1.TokenReviewStatus{Error: "invalid bearer token"}
		return out, nil
	}
	out.Status = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: r.Spec.Audiences,
		User: authenticationv1.UserInfo{Username: "system:serviceaccount:" + nodeProxySA, Extra: map[string]authenticationv1.ExtraValue{
			server.ExtraNodeName: {helperNode}, server.ExtraPodName: {"mesh-node-proxy-x1"},
		}}}
	return out, nil
}

// fileSource delivers the pods listed in a JSON file, polled.
type fileSource struct {
	path string
	log  *slog.Logger
}

func (s *fileSource) Run(ctx context.Context, update func([]Pod)) {
	var last []byte
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if b, err := os.ReadFile(s.path); err == nil && !bytes.Equal(b, last) {
			var pods []Pod
			if err := json.Unmarshal(b, &pods); err != nil {
				s.log.Error("Bad pods file", "error", err)
			} else {
				last = b
				update(pods)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// servedPod is one of the helper's pods on helperNode, labelled and annotated as the injector does.
func servedPod(ns, name, sa, ip string, annotations map[string]string) Pod {
	a := map[string]string{wellknown.AnnotationInjected: "default"}
	for k, v := range annotations {
		a[k] = v
	}
	return Pod{Namespace: ns, Name: name, UID: fmt.Sprintf("uid-%s-%s", ns, name), ServiceAccount: sa, NodeName: helperNode,
		IPs: []netip.Addr{netip.MustParseAddr(ip)}, Labels: map[string]string{wellknown.LabelProxy: wellknown.ProxyNode, "app": name},
		Annotations: a, Phase: "Running"}
}
