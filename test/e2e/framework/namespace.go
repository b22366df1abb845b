package framework

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Namespace creates a namespace named <prefix>-<random> for one test, with the given labels. When the test ends it
// collects artifacts if the test failed, then deletes the namespace (without waiting).
func (e *Env) Namespace(t testing.TB, prefix string, labels map[string]string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%04x", strings.ToLower(prefix), rand.IntN(1<<16))
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Client.Create(ctx, ns); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			dir := e.CollectArtifacts(ctx, t.Name())
			t.Logf("artifacts of the failed test: %s", dir)
		}
		if err := e.Client.Delete(ctx, ns); err != nil {
			t.Logf("delete namespace %s: %v", name, err)
		}
	})
	return name
}

// CollectOnFailure collects artifacts when the test ends failed (for tests that create no Namespace).
func (e *Env) CollectOnFailure(t testing.TB) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		t.Logf("artifacts of the failed test: %s", e.CollectArtifacts(ctx, t.Name()))
	})
}
