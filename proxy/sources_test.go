package proxy

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/authz"
)

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []uint16
		err  bool
	}{
		{"", nil, false},
		{" , ", nil, false},
		{"8080", []uint16{8080}, false},
		{"9090, 25,8080", []uint16{25, 8080, 9090}, false},
		{"7000-7003,7002,25", []uint16{25, 7000, 7001, 7002, 7003}, false},
		{"65534-65535", []uint16{65534, 65535}, false},
		{"0", nil, true},
		{"65536", nil, true},
		{"7010-7000", nil, true},
		{"http", nil, true},
		{"1-", nil, true},
	} {
		got, err := ParsePorts(tc.in)
		if (err != nil) != tc.err || !slices.Equal(got, tc.want) {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v (error %v)", tc.in, got, err, tc.want, tc.err)
		}
	}
	// What the injector writes into TRELLIS_PROXY_OPAQUE_PORTS and TRELLIS_PROXY_INBOUND_PROBE_PORTS.
	ports, err := inject.ParsePorts("25, 3306,7000-7010, 7005")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePorts(ports.String())
	if err != nil || len(got) != 13 || got[0] != 25 || got[12] != 7010 {
		t.Errorf("ParsePorts(%q) = %v, %v", ports.String(), got, err)
	}
	probes, err := ParsePorts(inject.PortsOf([]int32{8081, 8080, 9090}).String())
	if err != nil || !slices.Equal(probes, []uint16{8080, 8081, 9090}) {
		t.Errorf("probe ports %v, %v", probes, err)
	}
}

// TestProbePathsRoundTrip reads what the injector writes into TRELLIS_PROXY_INBOUND_PROBE_PATHS.
func TestProbePathsRoundTrip(t *testing.T) {
	written := inject.ProbePaths{{Port: 8080, Path: "/healthz"}, {Port: 8080, Path: "/ready"}, {Port: 9090, Path: "/a:b/%20"}}
	got, err := authz.ParseProbePaths(written.String())
	want := []authz.ProbePath{{Port: 8080, Path: "/healthz"}, {Port: 8080, Path: "/ready"}, {Port: 9090, Path: "/a:b/%20"}}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ParseProbePaths(%q) = %v, %v; want %v", written.String(), got, err, want)
	}
}

// fakeConfigMapAPI answers a list of the ConfigMap trellis-proxy-config with doc, and holds watches open.
func fakeConfigMapAPI(t *testing.T, doc string) (url, tokenFile, caFile string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer token" || !strings.HasSuffix(r.URL.Path, "/namespaces/shop/configmaps") {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		if r.URL.Query().Get("watch") == "true" {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"metadata": map[string]any{"resourceVersion": "7"},
			"items": []any{map[string]any{
				"metadata": map[string]any{"name": "trellis-proxy-config", "resourceVersion": "7"},
				"data":     map[string]any{"config.json": doc},
			}}})
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	tokenFile, caFile = filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(tokenFile, []byte("token"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, ca, 0o644); err != nil {
		t.Fatal(err)
	}
	return srv.URL, tokenFile, caFile
}

// TestRunConfigSources checks Run's choice of configuration source: with the API reachable, its document wins over
// the mounted volume's; --config-source volume ignores the API; --config-source api refuses to start without it.
func TestRunConfigSources(t *testing.T) {
	doc := func(version string) string {
		return fmt.Sprintf(`{"apiVersion": %q, "version": %q}`, proxyconfig.APIVersion, version)
	}
	url, tokenFile, caFile := fakeConfigMapAPI(t, doc("from-api"))
	for _, tc := range []struct {
		source, server, want string
	}{
		{ConfigSourceAuto, url, "from-api"},
		{ConfigSourceAPI, url, "from-api"},
		{ConfigSourceVolume, url, "from-volume"},
		{ConfigSourceAuto, "", "from-volume"}, // no API server known: the volume alone
	} {
		t.Run(tc.source+" "+tc.server, func(t *testing.T) {
			t.Setenv("KUBERNETES_SERVICE_HOST", "")
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(doc("from-volume")), 0o644); err != nil {
				t.Fatal(err)
			}
			out, in, adm := listen(t), listen(t), listen(t)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, RunOptions{ConfigDir: dir, ConfigSource: tc.source, APIServer: tc.server,
					APITokenFile: tokenFile, APICAFile: caFile, PodNamespace: "shop", PollInterval: 10 * time.Millisecond,
					PodLabelsFile: filepath.Join(dir, "no-labels"), Log: testLog,
					OutboundListener: out, InboundListener: in, AdminListener: adm,
					OriginalDst: func(c net.Conn) (netip.AddrPort, error) {
						return c.LocalAddr().(*net.TCPAddr).AddrPort(), nil
					}})
			}()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Error(err)
				}
			}()
			var version string
			for end := time.Now().Add(10 * time.Second); version != tc.want; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatalf("running %q, want %q", version, tc.want)
				}
				version = adminConfigVersion("http://" + adm.Addr().String())
			}
		})
	}
	err := Run(context.Background(), RunOptions{ConfigDir: t.TempDir(), ConfigSource: ConfigSourceAPI,
		APITokenFile: filepath.Join(t.TempDir(), "none"), PodNamespace: "shop", Log: testLog,
		OutboundListener: listen(t), InboundListener: listen(t), AdminListener: listen(t)})
	if err == nil || !strings.Contains(err.Error(), "--config-source api") {
		t.Errorf("Run with --config-source api and no API: %v", err)
	}
}

// adminConfigVersion returns the running configuration's version from /config, or "".
func adminConfigVersion(admin string) string {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: time.Second}).Get(admin + "/config")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var cs struct{ Version string }
	if json.NewDecoder(resp.Body).Decode(&cs) != nil {
		return ""
	}
	return cs.Version
}
