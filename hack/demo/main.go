// Command demo runs the local, self-contained demonstration of the mesh (`make demo`, as root): it starts the
// test-ground cluster (hack/cluster) unless it runs, builds and loads the images, installs Trellis, creates the
// sample Mesh, deploys the unchanged three-service shop application (test/apps/shop), meshes it by labelling its
// namespace, sends it traffic, and shows what a platform team sees: the Mesh's status, the pods with their
// proxies, the mTLS edges with workload identities from the proxies' metrics, and `trellis check`. The cluster
// stays up afterwards to poke around (`make cluster-down` removes it).
//
//	demo                   the mesh on the local cluster
//	demo -control-plane    the control plane alone on a bare API server (no root, no cluster)
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	controlPlane := flag.Bool("control-plane", false, "Demonstrate the control plane alone on a bare kube-apiserver (no cluster).")
	keep := flag.Bool("keep", false, "With -control-plane: keep the API server and manager running until interrupted.")
	flag.Parse()
	var err error
	if *controlPlane {
		err = runControlPlane(*keep)
	} else {
		err = runMesh()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}
