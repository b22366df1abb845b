package render

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// bigConfig is a configuration of n services with eps endpoints each.
func bigConfig(n, eps int) *proxyconfig.Config {
	cfg := &proxyconfig.Config{APIVersion: proxyconfig.APIVersion, Inbound: &proxyconfig.Inbound{DefaultPolicy: proxyconfig.PolicyDeny}}
	for i := 0; i < n; i++ {
		b := proxyconfig.Backend{Name: fmt.Sprintf("svc-%05d", i), Weight: ptr.To(int32(1))}
		for j := 0; j < eps; j++ {
			b.Endpoints = append(b.Endpoints, proxyconfig.Endpoint{
				Address:  fmt.Sprintf("10.%d.%d.%d:8080", i/250, i%250, j),
				Identity: fmt.Sprintf("spiffe://cluster.local/ns/team-%d/sa/svc-%05d", i%40, i),
			})
		}
		cfg.Services = append(cfg.Services, proxyconfig.Service{
			Name: b.Name, Namespace: fmt.Sprintf("team-%d", i%40), ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", i/250, i%250)},
			Port: 80, Backends: []proxyconfig.Backend{b},
		})
	}
	return cfg
}

// mergeShards decodes and merges every shard as the proxy does from its mounted directory.
func mergeShards(t *testing.T, shards []map[string]string) *proxyconfig.Loaded {
	t.Helper()
	var keys []string
	all := map[string]string{}
	for _, cm := range shards {
		for k, v := range cm {
			keys = append(keys, k)
			all[k] = v
		}
	}
	sort.Strings(keys)
	var docs []*proxyconfig.Config
	for _, k := range keys {
		c, err := proxyconfig.Decode([]byte(all[k]))
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		docs = append(docs, c)
	}
	merged, err := proxyconfig.Merge(docs...)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := proxyconfig.Complete(merged)
	if err != nil {
		t.Fatal(err)
	}
	return loaded
}

func TestEncodeProxyConfigSmallIsOneKey(t *testing.T) {
	shards, hash, err := EncodeProxyConfig(bigConfig(10, 3))
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) != 1 || len(shards[0]) != 1 || shards[0]["config.json"] == "" {
		t.Fatalf("want one ConfigMap with config.json, got %d ConfigMaps", len(shards))
	}
	if got := mergeShards(t, shards).Hash; got != hash {
		t.Fatalf("hash %s, proxy computes %s", hash, got)
	}
	again, hash2, _ := EncodeProxyConfig(bigConfig(10, 3))
	if hash2 != hash || again[0]["config.json"] != shards[0]["config.json"] {
		t.Fatal("the same snapshot rendered different bytes")
	}
}

// TestEncodeProxyConfigShardsAtTheLimit renders a configuration of about 2 MiB (2,000 services with 10 meshed
// endpoints each) and checks that it is split into ConfigMaps under the API server's 1 MiB limit, that the proxy's
// merge of the shards gives back the same configuration and hash, and that a configuration beyond
// wellknown.MaxProxyConfigMaps ConfigMaps is refused with a clear error.
func TestEncodeProxyConfigShardsAtTheLimit(t *testing.T) {
	cfg := bigConfig(2000, 10)
	shards, hash, err := EncodeProxyConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(shards) < 3 {
		t.Fatalf("a ~2 MiB configuration should need at least 3 ConfigMaps, got %d", len(shards))
	}
	total := 0
	for i, data := range shards {
		size := 0
		for k, v := range data {
			if !strings.HasPrefix(k, "config-") || !strings.HasSuffix(k, ".json") {
				t.Errorf("shard key %q", k)
			}
			size += len(k) + len(v)
		}
		if size > ConfigShardLimit {
			t.Errorf("ConfigMap %d holds %d bytes, over the %d limit", i, size, ConfigShardLimit)
		}
		total += size
	}
	loaded := mergeShards(t, shards)
	if loaded.Hash != hash {
		t.Fatalf("hash %s, proxy computes %s", hash, loaded.Hash)
	}
	if len(loaded.Config.Services) != 2000 || loaded.Config.Inbound.DefaultPolicy != proxyconfig.PolicyDeny {
		t.Fatalf("merged configuration lost data: %d services, policy %q", len(loaded.Config.Services), loaded.Config.Inbound.DefaultPolicy)
	}
	t.Logf("%d bytes in %d ConfigMaps", total, len(shards))

	_, _, err = EncodeProxyConfig(bigConfig(9000, 10))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("more than the %d", wellknown.MaxProxyConfigMaps)) {
		t.Fatalf("a configuration beyond %d ConfigMaps should be refused, got %v", wellknown.MaxProxyConfigMaps, err)
	}
}

// TestShardedConfigMapsFitTheAPIServer creates the ConfigMaps of a sharded configuration on a real API server,
// which refuses ConfigMaps over 1 MiB.
func TestShardedConfigMapsFitTheAPIServer(t *testing.T) {
	env.Require(t)
	c, err := client.New(env.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shards"}}); err != nil {
		t.Fatal(err)
	}
	shards, hash, err := EncodeProxyConfig(bigConfig(2000, 10))
	if err != nil {
		t.Fatal(err)
	}
	for _, cm := range ProxyConfigMaps(testMesh(), "shards", shards, hash) {
		cm.OwnerReferences = nil
		if err := c.Create(ctx, cm); err != nil {
			t.Fatalf("the API server refused ConfigMap %s: %v", cm.Name, err)
		}
	}
	// Without sharding the same configuration does not fit: the limit is real.
	whole := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "shards", Name: "whole"}, Data: map[string]string{}}
	for _, data := range shards {
		for k, v := range data {
			whole.Data[k] = v
		}
	}
	if err := c.Create(ctx, whole); err == nil {
		t.Fatal("the API server accepted a 2 MiB ConfigMap; the shard limit would be pointless")
	}
}
