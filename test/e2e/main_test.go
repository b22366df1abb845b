//go:build e2e

// Package e2e holds the end-to-end suites. They run on the test ground (hack/cluster, docs/test-ground.md):
//
//	make test-e2e        # as root; starts the cluster if needed and stops it afterwards if it started it
//
// TRELLIS_E2E_KEEP_CLUSTER=1 leaves a cluster the suite started running.
package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/trellis-mesh/trellis/test/e2e/framework"
)

// env is the test ground shared by every test of the package.
var env *framework.Env

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	start := time.Now()
	var err error
	env, err = framework.Setup(ctx, framework.Options{})
	if env != nil {
		defer func() {
			if err := env.Teardown(context.Background()); err != nil {
				fmt.Println("e2e: teardown:", err)
			}
		}()
	}
	if err != nil {
		fmt.Println("e2e: setup failed:", err)
		if env != nil && env.Client != nil {
			env.CollectArtifacts(ctx, "setup")
		}
		return 1
	}
	fmt.Printf("e2e: test ground ready in %s\n", time.Since(start).Round(time.Second))
	code := m.Run()
	if code != 0 && env.Client != nil && !env.Stopped() {
		env.CollectArtifacts(ctx, "suite")
	}
	return code
}
