package proxy

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReloadUnderLoad rewrites the configuration 100 times (moving the service between two backends) while clients
// send requests continuously, then installs a broken document. No request may fail; after the broken document the
// proxy keeps serving the last good configuration, counts the failure and still reports the good version in /config.
func TestReloadUnderLoad(t *testing.T) {
	a, b := namedBackend(t, "a"), namedBackend(t, "b")
	h := newHarness(t, serviceDoc("0", []string{a}, ""))
	stopWatch := make(chan struct{})
	var watchWG sync.WaitGroup
	watchWG.Go(func() { runWatcher(h, stopWatch) })
	defer func() { close(stopWatch); watchWG.Wait() }()

	const (
		clients     = 4
		maxRequests = 200_000 // bound on the load loop, whatever the machine's speed
	)
	var (
		ok, failed atomic.Int64
		stop       atomic.Bool
		wg         sync.WaitGroup
		firstErr   atomic.Value
		seen       sync.Map
	)
	deadline := time.Now().Add(2 * time.Minute)
	for range clients {
		wg.Go(func() {
			c := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 10 * time.Second}
			defer c.Transport.(*http.Transport).CloseIdleConnections()
			for !stop.Load() && ok.Load()+failed.Load() < maxRequests && time.Now().Before(deadline) {
				resp, err := c.Get("http://" + h.out + "/")
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d %s", resp.StatusCode, resp.Header.Get("Trellis-Proxy-Error")))
					continue
				}
				seen.Store(string(body), true)
				ok.Add(1)
			}
		})
	}
	waitVersion := func(v string) {
		for end := time.Now().Add(10 * time.Second); h.store.Load().Version != v; {
			if time.Now().After(end) {
				t.Fatalf("version %s never loaded (running %s)", v, h.store.Load().Version)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for i := 1; i <= 100; i++ {
		eps := []string{a}
		if i%2 == 1 {
			eps = []string{b}
		}
		h.writeConfig(serviceDoc(fmt.Sprint(i), eps, ""))
		waitVersion(fmt.Sprint(i))
		time.Sleep(2 * time.Millisecond)
	}
	good := h.store.Load().Hash
	h.writeConfig(`{"apiVersion": "proxy.trellis.io/v1alpha1", "version": "broken", "services": [{"name": "web"}]}`)
	for end := time.Now().Add(10 * time.Second); h.counter("config_reload_total", map[string]string{"result": "failure"}) < 1; {
		if time.Now().After(end) {
			t.Fatal("broken document was not noticed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	before := ok.Load()
	time.Sleep(100 * time.Millisecond)
	stop.Store(true)
	wg.Wait()

	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed during reloads; first: %v", failed.Load(), ok.Load()+failed.Load(), firstErr.Load())
	}
	if ok.Load() == before {
		t.Error("no request succeeded after the broken document")
	}
	for _, name := range []string{"a", "b"} {
		if _, ok := seen.Load(name); !ok {
			t.Errorf("backend %s never answered: reloads did not take effect", name)
		}
	}
	if cs := h.configStatus(); cs.Version != "100" || cs.Hash != good {
		t.Errorf("/config = %+v after a broken document, want version 100 hash %s", cs, good)
	}
	if n := h.counter("config_reload_total", map[string]string{"result": "success"}); n < 100 {
		t.Errorf("config_reload_total{result=success} = %v, want at least 100", n)
	}
	t.Logf("%d requests during 100 reloads, none failed", ok.Load())
}

// TestIdenticalDocumentIgnored checks that rewriting the same content does not swap the snapshot.
func TestIdenticalDocumentIgnored(t *testing.T) {
	h := newHarness(t, serviceDoc("1", nil, ""))
	before := h.store.Load()
	h.writeConfig(serviceDoc("1", nil, ""))
	res, err := h.watcher.Reload()
	if err != nil || res != "unchanged" || h.store.Load() != before {
		t.Fatalf("reload of identical content: %s, %v, swapped=%v", res, err, h.store.Load() != before)
	}
}

func runWatcher(h *harness, stop chan struct{}) {
	ctx, cancel := contextWithStop(stop)
	defer cancel()
	h.watcher.Run(ctx)
}
