//go:build e2e

package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/test/e2e/framework"
)

// TestClusterDownLeavesNothingBehind stops the cluster the suite started with `make cluster-down` and compares the
// host with its state before cluster-up: no process, mount, network namespace, link, route, iptables rule,
// cgroup or changed sysctl may remain. Go runs a package's tests in file-name order; this file's name keeps the
// test last. A cluster the suite did not start is left running and the test is skipped.
func TestClusterDownLeavesNothingBehind(t *testing.T) {
	if !env.OwnsCluster() || env.HostStateBefore() == nil {
		t.Skip("the cluster was running before the suite started; it stays up")
	}
	ctx := context.Background()
	if err := env.ClusterDown(ctx); err != nil {
		t.Fatalf("make cluster-down: %v", err)
	}
	after, err := framework.CaptureHostState(ctx, env.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if left := env.HostStateBefore().Leftovers(after); len(left) > 0 {
		t.Fatalf("make cluster-down left behind:\n%s", strings.Join(left, "\n"))
	}
}
