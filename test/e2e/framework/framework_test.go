package framework

import (
	"reflect"
	"testing"
)

func TestLeftoversReportsOnlyWhatIsNewOrChanged(t *testing.T) {
	before := &HostState{
		Netns:   []string{"trellis-bench-elsewhere"},
		Routes:  []string{"default via 192.0.2.1 dev eth0"},
		Sysctls: []string{"kernel.panic=1", "vm.overcommit_memory=0"},
	}
	after := &HostState{
		Netns:    []string{"trellis-bench-elsewhere", "trellis-node"},
		Routes:   []string{"default via 192.0.2.1 dev eth0", "10.244.0.0/24 via 10.200.0.10 dev trellis0"},
		Iptables: []string{"iptables-nft -t nat -A POSTROUTING -s 10.244.0.0/24 -j CNI-1"},
		Sysctls:  []string{"kernel.panic=10", "vm.overcommit_memory=0"},
		Mounts:   []string{"/run/netns/cni-1234"},
	}
	want := []string{
		"iptables: iptables-nft -t nat -A POSTROUTING -s 10.244.0.0/24 -j CNI-1",
		"mount: /run/netns/cni-1234",
		"netns: trellis-node",
		"route: 10.244.0.0/24 via 10.200.0.10 dev trellis0",
		"sysctl: kernel.panic=10",
	}
	if got := before.Leftovers(after); !reflect.DeepEqual(got, want) {
		t.Errorf("Leftovers:\n got %q\nwant %q", got, want)
	}
	if got := before.Leftovers(before); len(got) != 0 {
		t.Errorf("Leftovers of an unchanged host: %q", got)
	}
}

func TestClusterText(t *testing.T) {
	for s, want := range map[string]bool{
		"10.96.0.0/16 via 10.200.0.10 dev trellis0":  true,
		"-A KUBE-SERVICES -j KUBE-NODEPORTS":         true,
		"default via 192.0.2.1 dev eth0":             false,
		"-A INPUT -i lo -j ACCEPT":                   false,
		"5: veth1@if4: <BROADCAST,MULTICAST,UP> mtu": false,
	} {
		if got := clusterText(s); got != want {
			t.Errorf("clusterText(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestDecodeYAMLSkipsEmptyDocuments(t *testing.T) {
	objs, err := DecodeYAML([]byte("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# nothing\n---\n" +
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: a}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0].GetKind() != "Namespace" || objs[1].GetName() != "b" {
		t.Fatalf("got %d objects: %v", len(objs), objs)
	}
}
