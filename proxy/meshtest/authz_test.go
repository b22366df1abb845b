package meshtest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/proxy"
)

// pod describes a proxy run by proxy.Run for the authorization tests: its ServiceAccount, namespace, labels,
// configuration and listeners.
type pod struct {
	namespace, sa string
	labels        string // the downward API labels file's content
	doc           string
	out, in       *multiListener
	routes        map[netip.Addr]netip.AddrPort
	probePorts    []uint16
	networks      []netip.Prefix
}

// podProxy is a running pod proxy with the files a test may rewrite.
type podProxy struct {
	*runningProxy
	labelsFile string
}

// tokenFor registers a token of ServiceAccount namespace/sa with the identity service's TokenReview and writes it to
// a file.
func (s *identityService) tokenFor(t *testing.T, namespace, sa string) string {
	t.Helper()
	seg := func(v string) string { return base64.RawURLEncoding.EncodeToString([]byte(v)) }
	token := seg(`{"alg":"RS256"}`) + "." + seg(`{"sub":"system:serviceaccount:`+namespace+":"+sa+`"}`) + "." + seg("signature")
	s.reviewer.mu.Lock()
	s.reviewer.tokens[token] = namespace + ":" + sa
	s.reviewer.mu.Unlock()
	file := filepath.Join(s.dir, namespace+"-"+sa+".token")
	if err := os.WriteFile(file, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// startPod runs a proxy for p with a workload certificate from the identity service.
func startPod(t *testing.T, ids *identityService, p pod) *podProxy {
	t.Helper()
	cfgDir, podinfo := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(p.doc), 0o644); err != nil {
		t.Fatal(err)
	}
	labelsFile := filepath.Join(podinfo, "labels")
	if err := os.WriteFile(labelsFile, []byte(p.labels), 0o644); err != nil {
		t.Fatal(err)
	}
	_, bundleFile := ids.workloadFiles(t, "unused")
	tokenFile := ids.tokenFor(t, p.namespace, p.sa)
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- proxy.Run(ctx, proxy.RunOptions{
			ConfigDir:          cfgDir,
			ConfigSource:       proxy.ConfigSourceVolume,
			PodLabelsFile:      labelsFile,
			PollInterval:       20 * time.Millisecond,
			GracePeriod:        5 * time.Second,
			Log:                testLog.With("proxy", p.namespace+"/"+p.sa),
			IdentityAddr:       ids.addr,
			IdentityServerName: servingName,
			TrustDomain:        trustDomain,
			PodNamespace:       p.namespace,
			ServiceAccount:     p.sa,
			PodName:            p.sa + "-0",
			TokenFile:          tokenFile,
			TrustBundleFile:    bundleFile,
			InboundProbePorts:  p.probePorts,
			ClusterNetworks:    p.networks,
			OutboundListener:   p.out,
			InboundListener:    p.in,
			AdminListener:      adminLn,
			OriginalDst: func(c net.Conn) (netip.AddrPort, error) {
				la := c.LocalAddr().(*net.TCPAddr).AddrPort()
				if dst, ok := p.routes[la.Addr()]; ok {
					return dst, nil
				}
				return la, errors.New("no route")
			},
		})
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("proxy %s/%s: %v", p.namespace, p.sa, err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("proxy %s/%s did not stop", p.namespace, p.sa)
			}
		})
	}
	t.Cleanup(stop)
	rp := &runningProxy{out: p.out, in: p.in, admin: "http://" + adminLn.Addr().String(), stop: stop}
	eventually(t, 30*time.Second, "proxy "+p.namespace+"/"+p.sa+" ready", func() bool {
		code, _ := rp.get(t, "/ready")
		return code == 200
	})
	return &podProxy{runningProxy: rp, labelsFile: labelsFile}
}

const (
	podIP = "127.0.0.2" // the server pod's address in original destinations
	// Client addresses of unauthenticated clients: the server's cluster networks hold the first, not the second.
	inClusterClient  = "127.0.0.100"
	outsideClient    = "127.0.0.200"
	clusterNetworks  = "127.0.0.96/27"
	allowedRule      = "shop/web/client-sa"
	serverLabels     = "app=\"web\"\npod-template-hash=\"7d9f\"\n"
	idOther          = "spiffe://cluster.local/ns/shop/sa/other"
	idElsewhere      = "spiffe://cluster.local/ns/elsewhere/sa/client"
	authzServiceBase = 1000
)

// target is one port of the server pod: an HTTP application or a TCP echo, under a default policy, maybe a probe
// port.
type target struct {
	policy string
	http   bool
	probe  bool
	app    string // the application's address
	in     int    // index of the server's inbound listener standing for the port
}

func (tg target) port() uint16 { return netip.MustParseAddrPort(tg.app).Port() }

func (tg target) String() string {
	kind := "TCP"
	if tg.http {
		kind = "HTTP"
	}
	if tg.probe {
		kind += " probe"
	}
	return fmt.Sprintf("%s %s port %d", tg.policy, kind, tg.port())
}

// authzMesh is a server pod (ServiceAccount shop/web, labels app=web) with a port per target, and three meshed
// client pods whose outbound services lead to every non-probe target over mesh TLS.
type authzMesh struct {
	server   *podProxy
	clients  map[string]*podProxy // by SPIFFE ID
	targets  []target
	via      map[string][]string // client SPIFFE ID → outbound address per target (non-probe targets only)
	serverIn *multiListener
}

var policies = []string{"all-unauthenticated", "all-authenticated", "cluster-authenticated", "deny"}

// startAuthzMesh starts the pods; serverInbound renders the server's inbound section from its targets.
func startAuthzMesh(t *testing.T, ids *identityService, serverInbound func([]target) string) *authzMesh {
	t.Helper()
	am := &authzMesh{clients: map[string]*podProxy{}, via: map[string][]string{}}
	var ips []string
	for _, policy := range policies {
		for _, probe := range []bool{false, true} {
			for _, http := range []bool{true, false} {
				tg := target{policy: policy, http: http, probe: probe, in: len(am.targets)}
				if http {
					tg.app = app(t)
				} else {
					tg.app = echo(t)
				}
				am.targets = append(am.targets, tg)
				ips = append(ips, fmt.Sprintf("127.0.1.%d", tg.in+1))
			}
		}
	}
	am.serverIn = newMultiListener(t, ips...)
	routes := map[netip.Addr]netip.AddrPort{}
	var probes []uint16
	for _, tg := range am.targets {
		routes[netip.MustParseAddr(ips[tg.in])] = netip.AddrPortFrom(netip.MustParseAddr(podIP), tg.port())
		if tg.probe {
			probes = append(probes, tg.port())
		}
	}
	am.server = startPod(t, ids, pod{namespace: "shop", sa: "web", labels: serverLabels,
		doc: `{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "server", "inbound": ` + serverInbound(am.targets) + `}`,
		out: newMultiListener(t, "127.0.0.13"), in: am.serverIn, routes: routes, probePorts: probes,
		networks: []netip.Prefix{netip.MustParsePrefix(clusterNetworks)}})

	// The clients: each reaches target i at 10.96.0.1:<1000+i> through its outbound listener i.
	var services []string
	for _, tg := range am.targets {
		if tg.probe {
			continue
		}
		protocol := ""
		if !tg.http {
			protocol = `"protocol": "opaque",`
		}
		services = append(services, fmt.Sprintf(`{"name": "t%d", "namespace": "shop", "clusterIPs": ["10.96.0.1"],
		  "port": %d, %s "backends": [{"name": "t%d", "endpoints": [{"address": %q, "identity": %q}]}]}`,
			tg.in, authzServiceBase+tg.in, protocol, tg.in, am.serverIn.addr(tg.in), idWeb))
	}
	clientDoc := `{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "client", "services": [` +
		strings.Join(services, ",") + `]}`
	for i, c := range []struct{ namespace, sa, id string }{
		{"shop", "client", idClient}, {"shop", "other", idOther}, {"elsewhere", "client", idElsewhere},
	} {
		var outIPs []string
		clientRoutes := map[netip.Addr]netip.AddrPort{}
		for _, tg := range am.targets {
			if tg.probe {
				continue
			}
			ip := fmt.Sprintf("127.0.%d.%d", i+2, tg.in+1)
			outIPs = append(outIPs, ip)
			clientRoutes[netip.MustParseAddr(ip)] = netip.AddrPortFrom(netip.MustParseAddr("10.96.0.1"),
				uint16(authzServiceBase+tg.in))
		}
		out := newMultiListener(t, outIPs...)
		am.clients[c.id] = startPod(t, ids, pod{namespace: c.namespace, sa: c.sa, doc: clientDoc, out: out,
			in: newMultiListener(t, fmt.Sprintf("127.0.%d.100", i+2)), routes: clientRoutes})
		for j := range outIPs {
			am.via[c.id] = append(am.via[c.id], out.addr(j))
		}
	}
	return am
}

// viaClient returns the outbound address of a meshed client for a non-probe target.
func (am *authzMesh) viaClient(id string, tg target) string {
	n := 0
	for _, other := range am.targets {
		if other.in == tg.in {
			return am.via[id][n]
		}
		if !other.probe {
			n++
		}
	}
	panic("no such target")
}

// httpGet sends a request on a new connection from a local address (any when empty) and returns the status, the
// body and the deny reason.
func httpDo(t *testing.T, method, url, from string) (int, string, string) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	tr := &http.Transport{DisableKeepAlives: true, DialContext: d.DialContext}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(method, url, strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s from %q: %v", method, url, from, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("Trellis-Deny-Reason")
}

// tcpFrom sends msg on a new connection from a local address (any when empty), half-closes and returns the echo.
func tcpFrom(addr, from, msg string) string {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if from != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(from)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return ""
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestAuthorizationMatrix checks every kind of client against every default policy over HTTP and TCP, on ports
// whose MeshPolicy allows ServiceAccount shop/client, with real workload certificates: the decision, the deny
// reason, and the rule and client identity the decision is counted with.
func TestAuthorizationMatrix(t *testing.T) {
	ids := startIdentity(t, time.Hour)
	am := startAuthzMesh(t, ids, func(targets []target) string {
		var ports []string
		for _, tg := range targets {
			ports = append(ports, fmt.Sprintf(`{"port": %d, "defaultPolicy": %q, "authorizations": [{"name": "client-sa",
			  "serviceAccounts": [{"name": "client", "namespace": "shop"}]}]}`, tg.port(), tg.policy))
		}
		// The first entry selects other pods: it is ignored.
		return fmt.Sprintf(`{"defaultPolicy": "deny", "workloads": [
		  {"name": "shop/db", "namespace": "shop", "matchLabels": {"app": "db"}, "defaultPolicy": "all-unauthenticated"},
		  {"name": "shop/web", "namespace": "shop", "matchLabels": {"app": "web"}, "ports": [%s]}]}`,
			strings.Join(ports, ","))
	})

	type client struct {
		name     string
		id       string // SPIFFE ID of a meshed client; empty for plaintext
		from     string // local address of a plaintext client
		probe    bool   // the kubelet: plaintext to probe ports only
		tls      string
		expected map[string]bool // policy → allowed (on non-probe ports)
	}
	all := func(allowed ...string) map[string]bool {
		m := map[string]bool{}
		for _, p := range allowed {
			m[p] = true
		}
		return m
	}
	clients := []client{
		{name: "allowed ServiceAccount", id: idClient, tls: "true",
			expected: all(policies...)},
		{name: "other identity", id: idOther, tls: "true",
			expected: all("all-unauthenticated", "all-authenticated", "cluster-authenticated")},
		{name: "other namespace", id: idElsewhere, tls: "true",
			expected: all("all-unauthenticated", "all-authenticated", "cluster-authenticated")},
		{name: "unauthenticated in the cluster networks", from: inClusterClient, tls: "false",
			expected: all("all-unauthenticated", "cluster-authenticated")},
		{name: "unauthenticated outside the cluster networks", from: outsideClient, tls: "false",
			expected: all("all-unauthenticated")},
		{name: "kubelet probe", from: outsideClient, probe: true, tls: "false", expected: all(policies...)},
	}
	reasons := map[string]string{
		"all-authenticated":     "default:all-authenticated: client is not authenticated",
		"cluster-authenticated": "default:cluster-authenticated: unauthenticated client is outside the cluster networks",
		"deny":                  "default:deny: no authorization of shop/web allows the client",
	}
	type series struct{ name, labels string }
	counts := map[series]float64{} // what the server proxy must have counted
	var table strings.Builder
	fmt.Fprintf(&table, "%-46s", "client \\ default policy")
	for _, p := range policies {
		fmt.Fprintf(&table, " %-23s", p)
	}
	table.WriteString("\n")
	for _, c := range clients {
		fmt.Fprintf(&table, "%-46s", c.name)
		for _, policy := range policies {
			cell := ""
			for _, tg := range am.targets {
				if tg.policy != policy || tg.probe != c.probe {
					continue
				}
				allow := c.expected[policy]
				rule := "default:" + policy
				switch {
				case c.probe:
					rule = "probe"
				case c.id == idClient:
					rule = allowedRule
				}
				var got bool
				var reason string
				if tg.http {
					var code int
					var body string
					if c.id != "" {
						code, body, reason = httpDo(t, "GET", "http://"+am.viaClient(c.id, tg)+"/matrix", "")
					} else {
						code, body, reason = httpDo(t, "GET", "http://"+am.serverIn.addr(tg.in)+"/matrix", c.from)
					}
					got = code == 200 && body == "HTTP/1.1 /matrix 0"
					if !got && code != 403 {
						t.Errorf("%s → %v: %d %q, want 200 or 403", c.name, tg, code, body)
					}
				} else {
					addr := am.serverIn.addr(tg.in)
					if c.id != "" {
						addr = am.viaClient(c.id, tg)
					}
					got = tcpFrom(addr, c.from, "matrix") == "matrix"
				}
				if got != allow {
					t.Errorf("%s → %v: allowed=%v, want %v", c.name, tg, got, allow)
				}
				if tg.http && !allow && reason != reasons[policy] {
					t.Errorf("%s → %v: deny reason %q, want %q", c.name, tg, reason, reasons[policy])
				}
				result, kind := "deny", "tcp"
				if allow {
					result = "allow"
				}
				if tg.http {
					kind = "http"
				}
				counts[series{"inbound_" + kind + "_authz_" + result + "_total", fmt.Sprintf(
					`target_port="%d"|rule="%s"|tls="%s"|client_id="%s"`, tg.port(), rule, c.tls, c.id)}]++
				mark := "deny"
				if got {
					mark = "allow"
				}
				if cell != "" {
					cell += "/"
				}
				cell += mark
			}
			fmt.Fprintf(&table, " %-23s", cell+" (HTTP/TCP)")
		}
		table.WriteString("\n")
	}
	for s, want := range counts {
		if n := am.server.metric(t, s.name, strings.Split(s.labels, "|")...); n != want {
			t.Errorf("%s{%s} = %v, want %v", s.name, s.labels, n, want)
		}
	}
	t.Logf("decisions (allowed identity = ServiceAccount shop/client, rule %s):\n%s", allowedRule, table.String())
}

// TestRouteAuthorization checks a MeshPolicy rule with an HTTP condition: namespace elsewhere may GET /metrics (and
// below) and nothing else; ServiceAccount shop/client may use the whole port; the rest is denied.
func TestRouteAuthorization(t *testing.T) {
	ids := startIdentity(t, time.Hour)
	am := startAuthzMesh(t, ids, func(targets []target) string {
		var ports []string
		for _, tg := range targets {
			ports = append(ports, fmt.Sprintf(`{"port": %d, "defaultPolicy": "deny",
			  "authorizations": [{"name": "client-sa", "serviceAccounts": [{"name": "client", "namespace": "shop"}]}],
			  "routes": [{"name": "scrape-0", "matches": [{"method": "GET", "path": {"value": "/metrics"}}],
			    "authorizations": [{"name": "scrape", "namespaces": ["elsewhere"]}]}]}`, tg.port()))
		}
		return fmt.Sprintf(`{"workloads": [{"name": "shop/web", "namespace": "shop", "matchLabels": {"app": "web"},
		  "ports": [%s]}]}`, strings.Join(ports, ","))
	})
	var tg target
	for _, t := range am.targets {
		if t.http && !t.probe {
			tg = t
			break
		}
	}
	for _, tc := range []struct {
		client, method, path string
		allow                bool
		rule, route          string
	}{
		{idElsewhere, "GET", "/metrics", true, "shop/web/scrape", "scrape-0"},
		{idElsewhere, "GET", "/metrics/cpu", true, "shop/web/scrape", "scrape-0"},
		{idElsewhere, "POST", "/metrics", false, "default:deny", ""},
		{idElsewhere, "GET", "/orders", false, "default:deny", ""},
		{idOther, "GET", "/metrics", false, "default:deny", "scrape-0"},
		{idClient, "POST", "/orders", true, allowedRule, ""},
		{idClient, "GET", "/metrics", true, allowedRule, "scrape-0"},
	} {
		code, body, reason := httpDo(t, tc.method, "http://"+am.viaClient(tc.client, tg)+tc.path, "")
		if (code == 200) != tc.allow {
			t.Errorf("%s %s from %s: %d %q (%s), want allowed=%v", tc.method, tc.path, tc.client, code, body, reason,
				tc.allow)
		}
		result := "allow"
		if !tc.allow {
			result = "deny"
			if reason != "default:deny: no authorization of shop/web allows the client" {
				t.Errorf("%s %s from %s: reason %q", tc.method, tc.path, tc.client, reason)
			}
		}
		labels := []string{`rule="` + tc.rule + `"`, `route="` + tc.route + `"`, `client_id="` + tc.client + `"`,
			fmt.Sprintf(`target_port="%d"`, tg.port())}
		if n := am.server.metric(t, "inbound_http_authz_"+result+"_total", labels...); n < 1 {
			t.Errorf("%s %s from %s: no inbound_http_authz_%s_total%v", tc.method, tc.path, tc.client, result, labels)
		}
	}
	// Only the port's own authorization admits a TCP stream: the route's clients get nothing.
	var tcp target
	for _, t := range am.targets {
		if !t.http && !t.probe {
			tcp = t
			break
		}
	}
	if got := tcpFrom(am.viaClient(idElsewhere, tcp), "", "raw"); got != "" {
		t.Errorf("TCP from %s got %q, want the connection closed", idElsewhere, got)
	}
	if got := tcpFrom(am.viaClient(idClient, tcp), "", "raw"); got != "raw" {
		t.Errorf("TCP from %s got %q, want the echo", idClient, got)
	}
}

// TestWorkloadSelectors checks that the entries applying to the server pod follow its labels: matchExpressions
// select it, an entry whose selector does not match is ignored, and rewriting the labels file (as the kubelet does
// when the pod is relabelled) changes the decision without a restart.
func TestWorkloadSelectors(t *testing.T) {
	ids := startIdentity(t, time.Hour)
	am := startAuthzMesh(t, ids, func(targets []target) string {
		var ports []string
		for _, tg := range targets {
			ports = append(ports, fmt.Sprintf(`{"port": %d, "defaultPolicy": "deny"}`, tg.port()))
		}
		return fmt.Sprintf(`{"defaultPolicy": "all-unauthenticated", "workloads": [
		  {"name": "shop/db", "namespace": "shop", "matchLabels": {"app": "db"}, "authorizations": [
		    {"name": "everyone", "unauthenticated": true}]},
		  {"name": "shop/canary", "namespace": "shop", "matchExpressions": [
		    {"key": "track", "operator": "In", "values": ["canary"]}, {"key": "app", "operator": "Exists"}],
		   "ports": [%s]}]}`, strings.Join(ports, ","))
	})
	var tg target
	for _, t := range am.targets {
		if t.http && !t.probe {
			tg = t
			break
		}
	}
	get := func() (int, string) {
		code, _, reason := httpDo(t, "GET", "http://"+am.serverIn.addr(tg.in)+"/", outsideClient)
		return code, reason
	}
	if code, _ := get(); code != 200 {
		t.Fatalf("no entry selects app=web without track: %d, want 200", code)
	}
	relabel := func(labels string) {
		t.Helper()
		tmp := am.server.labelsFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(labels), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, am.server.labelsFile); err != nil {
			t.Fatal(err)
		}
	}
	relabel(serverLabels + "track=\"canary\"\n")
	eventually(t, 10*time.Second, "the canary entry applied", func() bool { code, _ := get(); return code == 403 })
	if code, reason := get(); code != 403 || reason != "default:deny: port denies all traffic" {
		t.Errorf("canary: %d %q", code, reason)
	}
	if n := am.server.metric(t, "config_reload_total", `source="labels"`, `result="success"`); n < 1 {
		t.Errorf("config_reload_total{source=labels,result=success} = %v", n)
	}
	relabel(serverLabels + "track=\"stable\"\n")
	eventually(t, 10*time.Second, "the canary entry dropped", func() bool { code, _ := get(); return code == 200 })
	// The /config endpoint still reports the same document: labels change the compilation, not the configuration.
	_, body := am.server.get(t, "/config")
	var cs struct{ Version string }
	if err := json.Unmarshal([]byte(body), &cs); err != nil || cs.Version != "server" {
		t.Errorf("/config = %s", body)
	}
}
