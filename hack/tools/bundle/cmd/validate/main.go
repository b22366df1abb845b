// Command validate checks an OLM bundle directory the way `operator-sdk bundle validate` does (default validators,
// and with -optional the operatorframework suite), using the same library. It exits 1 when there is an error.
// `make bundle-validate` runs it; see docs/olm.md.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/trellis-mesh/trellis/hack/tools/bundle/validate"
)

func main() {
	var opts validate.Options
	dir := flag.String("dir", "bundle", "Bundle directory.")
	flag.StringVar(&opts.K8sVersion, "k8s-version", "1.34", "Kubernetes version for the removed-APIs checks.")
	flag.BoolVar(&opts.Optional, "optional", true, "Also run the optional validators (OperatorHub, good practices, removed APIs).")
	flag.StringVar(&opts.Dockerfile, "dockerfile", "bundle.Dockerfile", "Bundle Dockerfile to compare with the annotations; empty skips it.")
	flag.Parse()

	r, err := validate.Bundle(*dir, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bundle-validate:", err)
		os.Exit(1)
	}
	r.Print(os.Stdout)
	if r.Errors() > 0 {
		os.Exit(1)
	}
}
