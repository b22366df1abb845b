package render

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
)

func TestNodeProxyGolden(t *testing.T) {
	m := testMesh()
	m.Spec.Proxy.Mode = meshv1alpha1.ProxyModeDaemonSet
	m.Spec.Proxy.LogLevel = "debug"
	golden(t, "node-proxy", NodeProxy(m, "trellis.io/proxy:test"))

	// The Mesh's image wins over the manager's.
	m.Spec.Proxy.Image = "registry.example.com/trellis/proxy:v1"
	for _, obj := range NodeProxy(m, "trellis.io/proxy:test") {
		if ds, ok := obj.(*appsv1.DaemonSet); ok {
			if got := ds.Spec.Template.Spec.Containers[0].Image; got != m.Spec.Proxy.Image {
				t.Fatalf("image %s, want spec.proxy.image %s", got, m.Spec.Proxy.Image)
			}
			return
		}
	}
	t.Fatal("no DaemonSet rendered")
}

func TestNodeProxyConfigMapsGolden(t *testing.T) {
	shards := []map[string]string{{"shard-000.json": "{}"}, {"shard-001.json": "{}"}}
	var objs []client.Object
	for _, cm := range NodeProxyConfigMaps(testMesh(), shards, "sha256:abc") {
		objs = append(objs, cm)
	}
	golden(t, "node-proxy-config", objs)
}
