package controllers

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
)

// WebhookRunner starts a webhook server once its certificate files exist. The manager mounts cert-manager's
// Secret for the injector as an optional volume: on a fresh install the Secret appears after the manager starts,
// and a webhook server started without files would stop the whole manager. Until the files appear the injector
// does not serve, and meshes say so in WebhookReady.
type WebhookRunner struct {
	// Server is the webhook server, with its handlers registered.
	Server webhook.Server
	// CertDir holds tls.crt and tls.key.
	CertDir string
	// Log receives logs.
	Log logr.Logger

	started atomic.Bool
}

// NeedLeaderElection is false: every replica serves the webhook.
func (w *WebhookRunner) NeedLeaderElection() bool { return false }

// Start waits for the certificate files, then runs the server until ctx ends.
func (w *WebhookRunner) Start(ctx context.Context) error {
	logged := false
	for !fileExists(filepath.Join(w.CertDir, "tls.crt")) || !fileExists(filepath.Join(w.CertDir, "tls.key")) {
		if !logged {
			w.Log.Info("Webhook server waiting for its certificate", "dir", w.CertDir)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	w.started.Store(true)
	return w.Server.Start(ctx)
}

// StartedChecker reports an error until the server serves; it fits a readyz check and Injection.ServerStarted.
func (w *WebhookRunner) StartedChecker(req *http.Request) error {
	if !w.started.Load() {
		return fmt.Errorf("waiting for the webhook certificate in %s", w.CertDir)
	}
	return w.Server.StartedChecker()(req)
}

// ServedCA returns the ca.crt of the certificate files the server was given (the mounted Secret), or nil.
func (w *WebhookRunner) ServedCA() []byte {
	b, err := os.ReadFile(filepath.Join(w.CertDir, "ca.crt"))
	if err != nil {
		return nil
	}
	return b
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
