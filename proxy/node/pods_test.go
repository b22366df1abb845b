package node

import (
	"context"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAPISource runs the pod source against a scripted API server: a list, a watch with additions, a relabelling,
// a bookmark, a deletion and a 410 ERROR event, then a new list. Each update carries the whole set of pods; the
// requests select the node's pods served by the node proxy, with the ServiceAccount token.
func TestAPISource(t *testing.T) {
	pod := func(name, rv, app string) string {
		return fmt.Sprintf(`{"metadata":{"name":%q,"namespace":"shop","uid":"uid-%s","resourceVersion":%q,
			"labels":{"mesh.trellis.io/proxy":"node","app":%q},"annotations":{"mesh.trellis.io/injected":"default"}},
			"spec":{"nodeName":"node-1","serviceAccountName":"web"},
			"status":{"phase":"Running","podIP":"10.244.0.%d","podIPs":[{"ip":"10.244.0.%d"},{"ip":"fd00::%d"}]}}`,
			name, name, rv, app, len(name), len(name), len(name))
	}
	var mu sync.Mutex
	var queries []string
	lists, watches := 0, 0
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.Query().Get("fieldSelector")+" "+r.URL.Query().Get("labelSelector")+" "+
			r.Header.Get("Authorization"))
		watch := r.URL.Query().Get("watch") == "true"
		if watch {
			watches++
		} else {
			lists++
		}
		n := lists
		w2 := watches
		mu.Unlock()
		if r.URL.Path != "/api/v1/pods" {
			http.NotFound(w, r)
			return
		}
		if !watch {
			items := pod("a", "10", "web")
			rv := "10"
			if n > 1 {
				items, rv = pod("a", "20", "web")+","+pod("ccc", "20", "web"), "20"
			}
			fmt.Fprintf(w, `{"metadata":{"resourceVersion":%q},"items":[%s]}`, rv, items)
			return
		}
		if w2 > 1 {
			<-r.Context().Done()
			return
		}
		flusher := w.(http.Flusher)
		for _, ev := range []string{
			`{"type":"ADDED","object":` + pod("bb", "11", "web") + `}`,
			`{"type":"MODIFIED","object":` + pod("a", "12", "web-v2") + `}`,
			`{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"13"}}}`,
			`{"type":"DELETED","object":` + pod("bb", "14", "web") + `}`,
			`{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version"}}`,
		} {
			fmt.Fprintln(w, ev)
			flusher.Flush()
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("the-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := &APISource{Host: srv.URL, TokenFile: token, CAFile: ca, NodeName: "node-1", MinBackoff: time.Millisecond}
	updates := make(chan []Pod, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx, func(p []Pod) { updates <- p }) }()
	defer func() { cancel(); <-done; srv.Client().CloseIdleConnections() }()

	describe := func(pods []Pod) string {
		var out []string
		for _, p := range pods {
			var ips []string
			for _, ip := range p.IPs {
				ips = append(ips, ip.String())
			}
			out = append(out, fmt.Sprintf("%s(%s,%s,%s)", p.Name, p.Labels["app"], p.ServiceAccount, strings.Join(ips, "+")))
		}
		return strings.Join(out, " ")
	}
	want := []string{
		"a(web,web,10.244.0.1+fd00::1)",
		"a(web,web,10.244.0.1+fd00::1) bb(web,web,10.244.0.2+fd00::2)",
		"a(web-v2,web,10.244.0.1+fd00::1) bb(web,web,10.244.0.2+fd00::2)",
		"a(web-v2,web,10.244.0.1+fd00::1)",
		"a(web,web,10.244.0.1+fd00::1) ccc(web,web,10.244.0.3+fd00::3)",
	}
	for i, w := range want {
		select {
		case got := <-updates:
			if describe(got) != w {
				t.Fatalf("update %d: %s, want %s", i, describe(got), w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no update %d", i)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, q := range queries {
		if q != "spec.nodeName=node-1 mesh.trellis.io/proxy=node Bearer the-token" {
			t.Fatalf("request %q", q)
		}
	}
	if lists != 2 || watches < 1 {
		t.Errorf("%d lists and %d watches, want 2 lists (the second after the 410) and a watch", lists, watches)
	}
}
