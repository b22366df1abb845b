//go:build linux

package dataplane

import (
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/trellis-mesh/trellis/internal/identity/identitytest"
	"github.com/trellis-mesh/trellis/internal/identity/server"
	"github.com/trellis-mesh/trellis/internal/redirect"
)

// Addresses of the mesh test: two pods, each with its proxy and redirect rules.
const (
	meshPodA      = "10.251.0.1"
	meshPodB      = "10.251.0.2"
	meshClusterIP = "10.96.0.20"
	identityPort  = "8443"
	identityName  = "trellis-identity.trellis-system.svc"
	idA           = "spiffe://cluster.local/ns/shop/sa/client"
	idB           = "spiffe://cluster.local/ns/shop/sa/web"
)

// identityHelper runs the identity service from the files in dir (issuer and serving Secrets' data, the tokens it
// accepts) on addr, with its Secrets in a fake clientset and TokenReviews answered from the token table.
func identityHelper(dir, addr string) int {
	// The fake clientset cannot stream a watch's initial list; client-go reads this gate on first use.
	_ = os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return b
	}
	var tokens map[string]string
	if err := json.Unmarshal(read("tokens.json"), &tokens); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	issuer := types.NamespacedName{Namespace: "trellis-system", Name: "trellis-identity-issuer"}
	serving := types.NamespacedName{Namespace: "trellis-serving", Name: "trellis-identity-tls"}
	secret := func(n types.NamespacedName, prefix string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: n.Namespace, Name: n.Name}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{"tls.crt": read(prefix + ".crt"), "tls.key": read(prefix + ".key"), "ca.crt": read("ca.crt")}}
	}
	srv, err := server.New(server.Options{
		Client:        fake.NewClientset(secret(issuer, "issuer"), secret(serving, "serving")),
		TokenReviewer: tokenTable(tokens),
		TrustDomain:   "cluster.local",
		IssuerSecret:  issuer,
		ServingSecret: serving,
		Addr:          addr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := srv.Start(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// tokenTable authenticates the tokens it holds as the ServiceAccount ("namespace:name") they map to.
type tokenTable map[string]string

func (tt tokenTable) Create(_ context.Context, r *authenticationv1.TokenReview, _ metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	out := r.DeepCopy()
	if sa, ok := tt[r.Spec.Token]; ok {
		out.Status = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: r.Spec.Audiences,
			User: authenticationv1.UserInfo{Username: "system:serviceaccount:" + sa}}
	} else {
		out.Status = authenticationv1.TokenReviewStatus{Error: "invalid bearer token"}
	}
	return out, nil
}

// writePKI writes the identity service's material and one token per ServiceAccount into dir, and returns the trust
// bundle's path and each ServiceAccount's token file (readable by the proxy's UID).
func writePKI(t *testing.T, dir string, serviceAccounts ...string) (bundle string, tokenFiles map[string]string) {
	t.Helper()
	root := identitytest.NewRoot(t, "dataplane trust anchor")
	issuer := root.NewIntermediate(t, "dataplane issuer")
	serving := root.ServingCert(t, identityName)
	write := func(name string, data []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	issuerData := issuer.IssuerSecretData(t)
	write("issuer.crt", issuerData["tls.crt"], 0o600)
	write("issuer.key", issuerData["tls.key"], 0o600)
	var servingPEM []byte
	for _, der := range serving.Certificate {
		servingPEM = append(servingPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	write("serving.crt", servingPEM, 0o600)
	write("serving.key", identitytest.PEMKey(t, serving.PrivateKey.(crypto.Signer)), 0o600)
	bundle = write("ca.crt", identitytest.PEMCerts(root.Cert), 0o644)
	tokens := map[string]string{}
	tokenFiles = map[string]string{}
	seg := func(v string) string { return base64.RawURLEncoding.EncodeToString([]byte(v)) }
	for _, sa := range serviceAccounts {
		token := seg(`{"alg":"RS256"}`) + "." + seg(`{"sub":"`+sa+`"}`) + "." + seg("sig")
		tokens[token] = "shop:" + sa
		p := write(sa+".token", []byte(token), 0o600)
		if err := os.Chown(p, proxyUID, proxyUID); err != nil {
			t.Fatal(err)
		}
		tokenFiles[sa] = p
	}
	b, _ := json.Marshal(tokens)
	write("tokens.json", b, 0o600)
	return bundle, tokenFiles
}

// TestMeshInterception runs two pods, each a network namespace with the redirect rules and the proxy binary
// configured through the TRELLIS_PROXY_* environment the injector sets, and the identity service in the second pod.
// It checks that HTTP and TCP between the pods go over mesh TLS 1.3 (with tshark on the wire when it is installed),
// that the server's proxy sees the client's identity, that a plaintext client is refused by the all-authenticated
// policy while the probe path stays open (and the rest of its port does not), and that both proxies stop cleanly.
func TestMeshInterception(t *testing.T) {
	self, dir, proxyBin := setupRoot(t, "trellis-dataplane-mesh-")
	pkiDir := filepath.Join(dir, "pki")
	if err := os.Mkdir(pkiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bundle, tokens := writePKI(t, pkiDir, "client", "web")

	suffix := fmt.Sprintf("%d%03d", os.Getpid()%10000, rand.IntN(1000))
	e := &env{t: t, pod: "tdm-a-" + suffix, peer: "tdm-b-" + suffix, self: self}
	vethA, vethB := "tdma"+suffix, "tdmb"+suffix
	e.run("ip", "netns", "add", e.pod)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", e.pod).Run() })
	e.run("ip", "netns", "add", e.peer)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", e.peer).Run() })
	e.run("ip", "link", "add", vethA, "netns", e.pod, "type", "veth", "peer", "name", vethB, "netns", e.peer)
	for _, c := range [][]string{
		{e.pod, "ip", "link", "set", "lo", "up"},
		{e.pod, "ip", "addr", "add", meshPodA + "/24", "dev", vethA},
		{e.pod, "ip", "link", "set", vethA, "up"},
		{e.pod, "ip", "route", "add", "default", "via", meshPodB},
		{e.peer, "ip", "link", "set", "lo", "up"},
		{e.peer, "ip", "addr", "add", meshPodB + "/24", "dev", vethB},
		{e.peer, "ip", "link", "set", vethB, "up"},
	} {
		e.run(append([]string{"ip", "netns", "exec"}, c...)...)
	}

	// Pod B: the identity service, the application (HTTP on 9090, a probe endpoint on 9091, TCP echo on 7070).
	cmd := exec.Command("ip", "netns", "exec", e.peer, self, pkiDir)
	cmd.Env = append(os.Environ(), "TRELLIS_DATAPLANE_HELPER=identity-server")
	idLogs := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = idLogs, idLogs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("identity service logs:\n%s", idLogs.String())
		}
	})
	e.startHelper(e.peer, "http-server", ":9090=app")
	e.startHelper(e.peer, "http-server", ":9091=probe")
	e.startHelper(e.peer, "echo-server", ":7070")
	waitFor(t, func() bool {
		c := exec.Command("ip", "netns", "exec", e.pod, self, meshPodB+":7070")
		c.Env = append(os.Environ(), "TRELLIS_DATAPLANE_HELPER=tcp-client")
		c.Stdin = strings.NewReader("probe")
		out, err := c.Output()
		return err == nil && string(out) == "probe"
	})
	// Redirect rules in both pods; pod B's identity service port is not redirected (proxy-init's skip-inbound-ports).
	installRedirect(t, e.pod)
	cfg := redirect.DefaultConfig()
	cfg.ProxyUID = proxyUID
	cfg.SkipInboundPorts = []redirect.PortRange{{First: 8443, Last: 8443}}
	rs, err := redirect.Plan(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&redirect.Nftables{NetNS: filepath.Join("/var/run/netns", e.peer)}).Install(rs); err != nil {
		t.Fatal(err)
	}

	configs := map[string]string{
		"client": fmt.Sprintf(`{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "a-1", "services": [
		  {"name": "web", "namespace": "shop", "clusterIPs": [%[1]q], "port": 80,
		   "backends": [{"name": "web", "endpoints": [{"address": "%[2]s:9090", "identity": %[3]q}]}]},
		  {"name": "db", "namespace": "shop", "clusterIPs": [%[1]q], "port": 5432, "protocol": "opaque",
		   "backends": [{"name": "db", "endpoints": [{"address": "%[2]s:7070", "identity": %[3]q}]}]}]}`,
			meshClusterIP, meshPodB, idB),
		"web": `{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "b-1", "inbound": {"defaultPolicy": "all-authenticated"}}`,
	}
	logs := map[string]*lockedBuffer{}
	procs := map[string]*exec.Cmd{}
	exited := map[string]<-chan struct{}{}
	for sa, ns := range map[string]string{"client": e.pod, "web": e.peer} {
		cfgDir := filepath.Join(dir, "config-"+sa)
		_ = os.Mkdir(cfgDir, 0o755)
		if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(configs[sa]), 0o644); err != nil {
			t.Fatal(err)
		}
		podIP := map[string]string{"client": meshPodA, "web": meshPodB}[sa]
		logs[sa] = &lockedBuffer{}
		procs[sa], exited[sa] = e.startEnv(ns, logs[sa], []string{
			"TRELLIS_PROXY_IDENTITY_ADDR=" + meshPodB + ":" + identityPort,
			"TRELLIS_PROXY_IDENTITY_SERVER_NAME=" + identityName,
			"TRELLIS_PROXY_TRUST_DOMAIN=cluster.local",
			"TRELLIS_PROXY_TOKEN_FILE=" + tokens[sa],
			"TRELLIS_PROXY_TRUST_BUNDLE_FILE=" + bundle,
			"TRELLIS_PROXY_POD_NAMESPACE=shop",
			"TRELLIS_PROXY_POD_NAME=" + sa + "-0",
			"TRELLIS_PROXY_SERVICE_ACCOUNT=" + sa,
			"TRELLIS_PROXY_POD_IP=" + podIP,
			"TRELLIS_PROXY_OPAQUE_PORTS=7070",
			"TRELLIS_PROXY_INBOUND_PROBE_PATHS=9091:/healthz",
			"TRELLIS_PROXY_LOG_LEVEL=debug",
			"TRELLIS_PROXY_CONFIG_DIR=" + cfgDir,
		}, "setpriv", fmt.Sprintf("--reuid=%d", proxyUID), fmt.Sprintf("--regid=%d", proxyUID), "--clear-groups",
			proxyBin, "--detect-timeout=500ms")
	}
	t.Cleanup(func() {
		if t.Failed() {
			for sa, l := range logs {
				t.Logf("proxy %s logs:\n%s", sa, l.String())
			}
		}
	})
	curl := func(ns string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, "curl", "-sS",
			"--max-time", "10"}, args...)...).CombinedOutput()
		return string(out), err
	}
	for _, ns := range []string{e.pod, e.peer} {
		waitFor(t, func() bool {
			out, err := curl(ns, "http://127.0.0.1:4191/ready")
			return err == nil && out == "ready\n"
		})
	}

	// Capture pod B's side of the wire while the meshed requests run, when tshark is there.
	var capture string
	var stopCapture func()
	capLogs := &lockedBuffer{}
	if tshark, err := exec.LookPath("tshark"); err == nil {
		capture = filepath.Join(dir, "mesh.pcapng")
		c := exec.Command("ip", "netns", "exec", e.peer, tshark, "-q", "-i", vethB, "-w", capture, "-f", "tcp port 9090 or tcp port 7070")
		c.Stdout, c.Stderr = capLogs, capLogs
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		stopCapture = func() {
			_ = c.Process.Signal(syscall.SIGINT)
			_ = c.Wait()
		}
		t.Cleanup(stopCapture)
		// "Capturing on" comes when tshark starts dumpcap, "Capture started" once dumpcap captures; a tshark that
		// does not print the latter gets two seconds after the former.
		var announced time.Time
		waitFor(t, func() bool {
			logs := capLogs.String()
			if announced.IsZero() && strings.Contains(logs, "Capturing on") {
				announced = time.Now()
			}
			return strings.Contains(logs, "Capture started") || !announced.IsZero() && time.Since(announced) > 2*time.Second
		})
	} else {
		t.Log("tshark not installed: the wire is not captured")
	}

	t.Run("meshed HTTP through the cluster IP", func(t *testing.T) {
		out, err := curl(e.pod, "http://"+meshClusterIP+"/hello")
		// The application sees pod B's proxy on the loopback, which proves the inbound hop.
		if err != nil || !strings.HasPrefix(out, "app saw GET /hello from 127.0.0.1:") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("meshed TCP to an opaque port", func(t *testing.T) {
		c := exec.Command("ip", "netns", "exec", e.pod, self, meshClusterIP+":5432")
		c.Env = append(os.Environ(), "TRELLIS_DATAPLANE_HELPER=tcp-client")
		c.Stdin = strings.NewReader("opaque over mesh TLS")
		out, err := c.CombinedOutput()
		if err != nil || string(out) != "opaque over mesh TLS" {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	if stopCapture != nil {
		// dumpcap hands packets over in blocks, up to a second late, and a capture stopped sooner loses them: wait
		// until the file holds the server side of both meshed connections (at most ten seconds), then stop.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			out, _ := exec.Command("tshark", "-r", capture, "-d", "tcp.port==9090,tls", "-d", "tcp.port==7070,tls",
				"-Y", "tls.handshake.type == 2", "-T", "fields", "-e", "frame.number").Output()
			if len(strings.Fields(string(out))) >= 2 {
				break
			}
		}
		stopCapture()
	}
	t.Run("plaintext client refused by all-authenticated", func(t *testing.T) {
		// Pod A's proxy forwards a destination it does not know as plain TCP.
		out, err := curl(e.pod, "-i", "http://"+meshPodB+":9090/plain")
		if err != nil || !strings.HasPrefix(out, "HTTP/1.1 403") ||
			!strings.Contains(out, "trellis-deny-reason: default:all-authenticated: client is not authenticated") {
			t.Fatalf("got %q, %v", out, err)
		}
	})
	t.Run("probe path open to plaintext, the rest of its port is not", func(t *testing.T) {
		out, err := curl(e.pod, "http://"+meshPodB+":9091/healthz")
		if err != nil || !strings.HasPrefix(out, "probe saw GET /healthz") {
			t.Fatalf("got %q, %v", out, err)
		}
		out, err = curl(e.pod, "-i", "http://"+meshPodB+":9091/admin")
		if err != nil || !strings.HasPrefix(out, "HTTP/1.1 403") ||
			!strings.Contains(out, "trellis-deny-reason: default:all-authenticated: client is not authenticated") {
			t.Fatalf("GET /admin on the probe port: got %q, %v", out, err)
		}
	})
	t.Run("metrics carry identities", func(t *testing.T) {
		a, err := curl(e.pod, "http://127.0.0.1:4191/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, err := curl(e.peer, "http://127.0.0.1:4191/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []struct{ metrics, series string }{
			{a, `response_total{authority="web.shop.svc.cluster.local:80",classification="success",client_id="",direction="outbound",dst_namespace="shop",dst_service="web",route="",server_id="` + idB + `",status_code="200",tls="true"} 1`},
			{a, `tcp_open_total{client_id="",direction="outbound",dst_namespace="shop",dst_service="db",server_id="` + idB + `",tls="true"} 1`},
			{b, `request_total{authority="` + meshClusterIP + `",client_id="` + idA + `",direction="inbound"`},
			{b, `tcp_open_total{client_id="` + idA + `",direction="inbound",dst_namespace="",dst_service="",server_id="",tls="true"} 2`},
			{b, `inbound_http_authz_deny_total{authority="` + meshPodB + `:9090",client_id="",route="",rule="default:all-authenticated",target_port="9090",tls="false"} 1`},
			{b, `inbound_http_authz_allow_total{authority="` + meshPodB + `:9091",client_id="",route="",rule="probe",target_port="9091",tls="false"} 1`},
			{b, `inbound_http_authz_deny_total{authority="` + meshPodB + `:9091",client_id="",route="",rule="default:all-authenticated",target_port="9091",tls="false"} 1`},
			{b, `mtls_handshake_total{direction="inbound",result="success"} 2`},
			{b, `identity_cert_refresh_total{result="success"} 1`},
			{b, "identity_cert_expiration_timestamp_seconds "},
		} {
			if !strings.Contains(want.metrics, want.series) {
				t.Errorf("metrics lack %s", want.series)
			}
		}
		if t.Failed() {
			t.Logf("pod A:\n%s\npod B:\n%s", grepLines(a, "tls=\"true\"", "authz", "mtls", "identity_"), grepLines(b, "tls=\"true\"", "authz", "mtls", "identity_"))
		}
	})
	if capture != "" {
		t.Run("the wire carries TLS 1.3 with the mesh's ALPN and no plaintext HTTP", func(t *testing.T) {
			fields := func(filter string, fs ...string) string {
				args := []string{"-r", capture, "-d", "tcp.port==9090,tls", "-d", "tcp.port==7070,tls", "-Y", filter, "-T", "fields"}
				for _, f := range fs {
					args = append(args, "-e", f)
				}
				c := exec.Command("tshark", args...)
				var stderr strings.Builder
				c.Stderr = &stderr
				out, err := c.Output()
				if err != nil {
					t.Fatalf("tshark %v: %v\n%s", args, err, stderr.String())
				}
				return strings.TrimSpace(string(out))
			}
			hellos := fields("tls.handshake.type == 1", "tcp.dstport", "tls.handshake.extensions_alpn_str")
			if !strings.Contains(hellos, "9090\th2,trellis/1") || !strings.Contains(hellos, "7070\ttrellis/1") {
				t.Errorf("ClientHellos (port, ALPN):\n%s", hellos)
			}
			versions := fields("tls.handshake.type == 2", "tls.handshake.extensions.supported_version")
			t.Logf("ClientHellos (port, ALPN):\n%s\nServerHello versions: %s", hellos, strings.Join(strings.Fields(versions), " "))
			for _, v := range strings.Fields(versions) {
				if v != "0x0304" {
					t.Errorf("ServerHello version %s, want TLS 1.3 (0x0304)", v)
				}
			}
			if versions == "" {
				t.Error("no ServerHello captured")
			}
			if plain := fields("http.request or frame contains \"GET /hello\" or frame contains \"opaque over\"", "frame.number"); plain != "" {
				t.Errorf("plaintext on the wire:\n%s", plain)
			}
			if t.Failed() {
				out, err := exec.Command("tshark", "-r", capture, "-c", "40").CombinedOutput()
				t.Logf("tshark printed:\n%s\nthe capture (%v):\n%s", capLogs.String(), err, out)
			}
		})
	}
	t.Run("SIGTERM drains and exits", func(t *testing.T) {
		for sa, p := range procs {
			if err := p.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited[sa]:
			case <-time.After(20 * time.Second):
				t.Fatalf("proxy %s still running 20s after SIGTERM", sa)
			}
			if !p.ProcessState.Success() || !strings.Contains(logs[sa].String(), "Proxy stopped") {
				t.Errorf("proxy %s exited with %v", sa, p.ProcessState)
			}
		}
	})
}

func grepLines(text string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		for _, s := range subs {
			if strings.Contains(l, s) && !strings.HasPrefix(l, "#") {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
