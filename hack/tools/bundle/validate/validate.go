// Package validate checks an OLM bundle directory with the validators of github.com/operator-framework/api, the
// library `operator-sdk bundle validate` runs, plus the format checks operator-sdk takes from operator-registry
// (annotations, dependencies, supported kinds) and a comparison of bundle.Dockerfile's LABELs with the annotations.
package validate

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/validation"
	apierrors "github.com/operator-framework/api/pkg/validation/errors"
	interfaces "github.com/operator-framework/api/pkg/validation/interfaces"
)

// Options select the checks.
type Options struct {
	// K8sVersion is the Kubernetes version the bundle targets, for the removed-APIs checks (e.g. "1.34").
	K8sVersion string
	// Optional adds the optional validators: OperatorHub (metadata, capabilities, categories), good practices
	// and removed APIs, i.e. operator-sdk's --select-optional suite=operatorframework.
	Optional bool
	// Dockerfile is the bundle image's Dockerfile, whose LABELs must equal the annotations and whose COPY
	// sources must exist. Empty skips the check.
	Dockerfile string
}

// Level of a finding.
const (
	Error   = "ERROR"
	Warning = "WARN"
)

// Finding is one error or warning.
type Finding struct {
	Level     string
	Validator string
	// Object names the bundle, CSV, CRD or file the finding is about.
	Object  string
	Message string
}

// Report is every finding, sorted by level (errors first), validator, object and message.
type Report struct {
	Findings []Finding
}

// Errors counts the findings of level Error.
func (r Report) Errors() int { return r.count(Error) }

// Warnings counts the findings of level Warning.
func (r Report) Warnings() int { return r.count(Warning) }

func (r Report) count(level string) int {
	n := 0
	for _, f := range r.Findings {
		if f.Level == level {
			n++
		}
	}
	return n
}

// Print writes one line per finding and a summary.
func (r Report) Print(w io.Writer) {
	for _, f := range r.Findings {
		fmt.Fprintf(w, "%-5s [%s] %s: %s\n", f.Level, f.Validator, f.Object, f.Message)
	}
	fmt.Fprintf(w, "%d error(s), %d warning(s)\n", r.Errors(), r.Warnings())
}

type named struct {
	name string
	v    interfaces.Validator
}

// The default validators of operator-sdk bundle validate.
var defaults = []named{
	{"csv", validation.ClusterServiceVersionValidator},
	{"crd", validation.CustomResourceDefinitionValidator},
	{"bundle", validation.BundleValidator},
	{"object", validation.ObjectValidator},
}

// The optional operatorframework suite. OperatorHubV2 plus the capabilities and categories validators replace the
// deprecated OperatorHubValidator, check for check.
var optional = []named{
	{"operatorhub", validation.OperatorHubV2Validator},
	{"capabilities", validation.StandardCapabilitiesValidator},
	{"categories", validation.StandardCategoriesValidator},
	{"good-practices", validation.GoodPracticesValidator},
	{"removed-apis", validation.AlphaDeprecatedAPIsValidator},
}

// Bundle validates the bundle in dir. The error is for a bundle that cannot be loaded at all; everything else is
// a finding.
func Bundle(dir string, opts Options) (Report, error) {
	var r Report
	if _, err := os.Stat(filepath.Join(dir, "manifests")); err != nil {
		return r, fmt.Errorf("no bundle in %s (make bundle generates it): %w", dir, err)
	}
	b, err := manifests.GetBundleFromDir(dir)
	if err != nil {
		return r, fmt.Errorf("loading the bundle in %s: %w", dir, err)
	}
	objs := append(b.ObjectsToValidate(), map[string]string{"k8s-version": opts.K8sVersion})
	run := defaults
	if opts.Optional {
		run = append(append([]named{}, defaults...), optional...)
	}
	for _, n := range run {
		for _, res := range n.v.Validate(objs...) {
			r.add(n.name, res)
		}
	}
	for _, f := range checkFormat(dir, b, opts.Dockerfile) {
		r.Findings = append(r.Findings, f)
	}
	sort.SliceStable(r.Findings, func(i, j int) bool {
		a, b := r.Findings[i], r.Findings[j]
		if a.Level != b.Level {
			return a.Level == Error
		}
		if a.Validator != b.Validator {
			return a.Validator < b.Validator
		}
		if a.Object != b.Object {
			return a.Object < b.Object
		}
		return a.Message < b.Message
	})
	return r, nil
}

func (r *Report) add(validator string, res apierrors.ManifestResult) {
	for _, e := range res.Errors {
		r.Findings = append(r.Findings, Finding{Error, validator, res.Name, message(e)})
	}
	for _, w := range res.Warnings {
		r.Findings = append(r.Findings, Finding{Warning, validator, res.Name, message(w)})
	}
}

// message is the library's text of an error (as operator-sdk prints it) without its level prefix: the finding
// carries the level.
func message(e apierrors.Error) string {
	return strings.TrimPrefix(e.Error(), string(e.Level)+": ")
}
