package controllers

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/identity/server"
	"github.com/trellis-mesh/trellis/internal/render"
)

// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch

// IdentityService runs the identity service of one Mesh inside the manager (a controller-runtime Runnable on every
// replica). It waits until the Mesh exists, then serves certificates in the Mesh's trust domain, signed with the
// identity issuer Secret cert-manager keeps for that Mesh, over TLS with the Mesh's identity-service certificate.
// The Mesh's trust domain is immutable; its workload certificate lifetime is read when the service starts.
type IdentityService struct {
	// Reader reads the Mesh (an uncached reader is fine).
	Reader client.Reader
	// Clientset watches the Secrets and creates TokenReviews.
	Clientset kubernetes.Interface
	// MeshName names the Mesh whose identities the service issues. Default: "default".
	MeshName string
	// Addr is the listen address. Default: ":8080".
	Addr string
	// Registerer receives the service's metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
	// Recorder records Events about the issuer and serving Secrets; nil disables them.
	Recorder events.EventRecorder
	// Log receives logs.
	Log logr.Logger

	server atomic.Pointer[server.Server]
}

// NeedLeaderElection is false: every replica serves.
func (s *IdentityService) NeedLeaderElection() bool { return false }

// Start waits for the Mesh, then runs the identity service until ctx ends.
func (s *IdentityService) Start(ctx context.Context) error {
	name := s.MeshName
	if name == "" {
		name = "default"
	}
	mesh := &meshv1alpha1.Mesh{}
	logged := false
	for {
		err := s.Reader.Get(ctx, types.NamespacedName{Name: name}, mesh)
		if err == nil {
			break
		}
		if !logged {
			s.Log.Info("Identity service waiting for its Mesh", "mesh", name, "reason", err.Error())
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	ns := mesh.Spec.ControlPlaneNamespace
	opts := server.Options{
		Client:        s.Clientset,
		TrustDomain:   mesh.Spec.TrustDomain,
		IssuerSecret:  types.NamespacedName{Namespace: ns, Name: render.IdentityIssuerName(mesh)},
		ServingSecret: types.NamespacedName{Namespace: ns, Name: render.IdentityServingName(mesh)},
		Addr:          s.Addr,
		// The node proxies of DaemonSet mode hold the identities of the pods on their node.
		NodeProxy:  types.NamespacedName{Namespace: ns, Name: render.NodeProxyName(mesh)},
		Registerer: s.Registerer,
		Recorder:   s.Recorder,
		Logger:     s.Log,
	}
	if lt := mesh.Spec.Identity.WorkloadCertLifetime; lt != nil {
		opts.LeafLifetime = lt.Duration
	}
	srv, err := server.New(opts)
	if err != nil {
		return fmt.Errorf("identity service for Mesh %s: %w", name, err)
	}
	s.server.Store(srv)
	s.Log.Info("Identity service starting", "mesh", name, "trustDomain", mesh.Spec.TrustDomain, "addr", opts.Addr)
	return srv.Start(ctx)
}

// ReadyCheck fits the manager's readyz: it passes while the service waits for its Mesh (there is nothing to
// serve), then reports the service's own readiness (issuer and serving certificate loaded).
func (s *IdentityService) ReadyCheck(req *http.Request) error {
	if srv := s.server.Load(); srv != nil {
		return srv.ReadyCheck(req)
	}
	return nil
}
