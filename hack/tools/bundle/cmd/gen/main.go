// Command gen writes the Trellis OLM bundle from the kustomize install: `make bundle` runs it from the repository
// root. See docs/olm.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/trellis-mesh/trellis/hack/tools/bundle/generate"
)

// pairs is a repeatable key=value flag.
type pairs map[string]string

func (p pairs) String() string { return fmt.Sprint(map[string]string(p)) }

func (p pairs) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" || v == "" {
		return fmt.Errorf("%q is not key=value", s)
	}
	p[k] = v
	return nil
}

func main() {
	opts := generate.Options{Images: pairs{}, Requires: pairs{}}
	manifests := flag.String("manifests", "config/manifests", "Kustomize directory holding the base CSV, the install and the samples.")
	out := flag.String("out", "bundle", "Bundle directory; its manifests/, metadata/ and tests/ are replaced.")
	dockerfile := flag.String("dockerfile", "bundle.Dockerfile", "Where to write the bundle image's Dockerfile; empty skips it.")
	icon := flag.String("icon", "config/manifests/icon.svg", "SVG icon used when the base CSV has none; empty for none.")
	channels := flag.String("channels", "alpha", "Comma-separated channels.")
	flag.StringVar(&opts.Version, "version", "", "Operator version, semver without a leading v (required).")
	flag.StringVar(&opts.Package, "package", "trellis", "OLM package name.")
	flag.StringVar(&opts.DefaultChannel, "default-channel", "", "Default channel; default: the first channel.")
	flag.StringVar(&opts.CreatedAt, "created-at", "", "The CSV's createdAt annotation, RFC 3339 (required; no clock is read).")
	flag.StringVar(&opts.Replaces, "replaces", "", "CSV this release replaces, e.g. trellis.v0.1.0; empty for the first release.")
	flag.StringVar(&opts.ScorecardImage, "scorecard-image", "", "Image of the basic scorecard test (required).")
	flag.Var(pairs(opts.Images), "image", "repository=reference: the release image for a repository used in config/ (repeatable).")
	flag.Var(pairs(opts.Requires), "requires", "package=range: an olm.package dependency (repeatable).")
	flag.Parse()
	opts.Channels = strings.Split(*channels, ",")

	if err := run(*manifests, *out, *dockerfile, *icon, opts); err != nil {
		fmt.Fprintln(os.Stderr, "bundle:", err)
		os.Exit(1)
	}
}

func run(manifests, out, dockerfile, icon string, opts generate.Options) error {
	if icon != "" {
		data, err := os.ReadFile(icon)
		if err != nil {
			return err
		}
		opts.Icon = data
	}
	objs, err := generate.Build(manifests)
	if err != nil {
		return err
	}
	b, err := generate.Generate(objs, opts)
	if err != nil {
		return err
	}
	for _, n := range b.Notes {
		fmt.Fprintln(os.Stderr, "bundle: note:", n)
	}
	if err := b.Write(out, dockerfile); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bundle: wrote %d files to %s/", len(b.Files), out)
	if dockerfile != "" {
		fmt.Fprintf(os.Stderr, " and %s", dockerfile)
	}
	fmt.Fprintln(os.Stderr)
	return nil
}
