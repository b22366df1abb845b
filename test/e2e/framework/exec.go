package framework

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Run runs a command in the repository's top folder and returns its standard output. The error carries the
// command line and its standard error.
func (e *Env) Run(ctx context.Context, name string, args ...string) (string, error) {
	return e.RunInput(ctx, "", name, args...)
}

// RunInput is Run with stdin.
func (e *Env) RunInput(ctx context.Context, stdin, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = e.Root
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Kubectl runs the cluster's kubectl as cluster admin.
func (e *Env) Kubectl(ctx context.Context, args ...string) (string, error) {
	return e.Run(ctx, e.KubectlPath, append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
}

// KubectlInput runs kubectl with stdin, e.g. KubectlInput(ctx, yaml, "apply", "-f", "-").
func (e *Env) KubectlInput(ctx context.Context, stdin string, args ...string) (string, error) {
	return e.RunInput(ctx, stdin, e.KubectlPath, append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
}

// InNode runs a command on the node: in its network namespace, with the host's filesystem (nsenter --net).
// For example InNode(ctx, "iptables-save", "-t", "nat") shows kube-proxy's rules.
func (e *Env) InNode(ctx context.Context, name string, args ...string) (string, error) {
	return e.Run(ctx, "nsenter", append([]string{"--net=/var/run/netns/" + NetNS, name}, args...)...)
}

// Exec runs a command in a pod's container (kubectl exec) and returns its standard output.
func (e *Env) Exec(ctx context.Context, namespace, pod, container string, command ...string) (string, error) {
	args := []string{"-n", namespace, "exec", pod}
	if container != "" {
		args = append(args, "-c", container)
	}
	return e.Kubectl(ctx, append(append(args, "--"), command...)...)
}

// Logs returns a pod container's log.
func (e *Env) Logs(ctx context.Context, namespace, pod, container string) (string, error) {
	args := []string{"-n", namespace, "logs", pod}
	if container != "" {
		args = append(args, "-c", container)
	}
	return e.Kubectl(ctx, args...)
}
