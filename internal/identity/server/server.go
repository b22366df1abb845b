// Package server is the Trellis identity service: it signs workload certificates (X.509-SVIDs) for proxies that
// prove their ServiceAccount with a projected token. The manager hosts it as a controller-runtime Runnable on every
// replica (no leader election needed: signing is stateless).
//
// Wiring it into a manager:
//
//	srv, err := server.New(server.Options{
//		Client:        kubernetes.NewForConfigOrDie(mgr.GetConfig()),
//		TrustDomain:   mesh.Spec.TrustDomain,
//		IssuerSecret:  types.NamespacedName{Namespace: "trellis-system", Name: "trellis-identity-issuer"},
//		ServingSecret: types.NamespacedName{Namespace: "trellis-system", Name: "trellis-identity-tls"},
//		Registerer:    metrics.Registry, // sigs.k8s.io/controller-runtime/pkg/metrics
//		Recorder:      mgr.GetEventRecorder("trellis-identity"),
//		Logger:        ctrl.Log.WithName("identity"),
//	})
//	if err != nil { ... }
//	if err := mgr.Add(srv); err != nil { ... }
//	_ = mgr.AddReadyzCheck("identity", srv.ReadyCheck)
//
// RBAC it needs: create tokenreviews.authentication.k8s.io; get, list, watch on the two Secrets (resourceNames may
// restrict it to them: the watches select them by name); create and patch events.events.k8s.io.
//
// See docs/identity.md for the protocol, the checks and their reasons.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// Defaults of Options.
const (
	// DefaultAddr is the default listen address.
	DefaultAddr = ":8080"
	// DefaultLeafLifetime is the default lifetime of issued certificates.
	DefaultLeafLifetime = 24 * time.Hour
	// DefaultBackdate is how far before issuance a certificate's NotBefore is set by default, to tolerate clock skew
	// between nodes.
	DefaultBackdate = time.Minute
	// DefaultShutdownTimeout is how long Start waits for in-flight requests when its context ends.
	DefaultShutdownTimeout = 10 * time.Second
)

// TokenReviewer creates TokenReviews; kubernetes.Interface.AuthenticationV1().TokenReviews() is one.
type TokenReviewer interface {
	Create(ctx context.Context, review *authenticationv1.TokenReview, opts metav1.CreateOptions) (*authenticationv1.TokenReview, error)
}

// Options configure a Server. Client, TrustDomain and IssuerSecret are required; ServingSecret is required for
// Start.
type Options struct {
	// Client reads and watches the issuer and serving Secrets and, unless TokenReviewer is set, creates TokenReviews.
	Client kubernetes.Interface
	// TokenReviewer overrides Client.AuthenticationV1().TokenReviews(). Default: from Client.
	TokenReviewer TokenReviewer
	// TrustDomain is the trust domain of issued SPIFFE IDs, e.g. "cluster.local". Required.
	TrustDomain string
	// Audience is the token audience checked by the TokenReview. Default: identity.Audience.
	Audience string
	// IssuerSecret names the kubernetes.io/tls Secret (tls.crt, tls.key, optional ca.crt) of the identity issuer CA
	// that cert-manager maintains. It is watched; a rotation takes effect for the next request. Required.
	IssuerSecret types.NamespacedName
	// ServingSecret names the kubernetes.io/tls Secret of the service's own serving certificate. It is watched; a
	// rotation takes effect for the next handshake. Required for Start; Certify does not need it.
	ServingSecret types.NamespacedName
	// Addr is the TCP listen address. Default: DefaultAddr. Ignored when Listener is set.
	Addr string
	// Listener, when set, is used instead of listening on Addr; Start closes it when it returns.
	Listener net.Listener
	// LeafLifetime is the lifetime of issued certificates, clamped so that a certificate never outlives its issuer.
	// Default: DefaultLeafLifetime.
	LeafLifetime time.Duration
	// Backdate sets NotBefore this long before issuance. Default: DefaultBackdate. Negative means zero.
	Backdate time.Duration
	// ShutdownTimeout bounds the graceful shutdown in Start. Default: DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Clock is the time source. Default: the real clock.
	Clock clock.PassiveClock
	// Rand is the source of certificate serial numbers. Default: crypto/rand.Reader.
	Rand io.Reader
	// Registerer receives the metrics (see docs/identity.md). Default: nil, metrics are kept but not registered.
	Registerer prometheus.Registerer
	// Recorder records Events about the Secrets (loaded, rotated, invalid, deleted). Default: nil, no Events.
	Recorder events.EventRecorder
	// Logger receives logs. Default: logr.Discard().
	Logger logr.Logger
	// NodeProxy is the ServiceAccount of the mesh's node proxies (DaemonSet mode). Its tokens may obtain the
	// certificate of any ServiceAccount that has a pod served by the node proxy (labelled mesh.trellis.io/proxy=node,
	// not finished) on the node the token is bound to; see docs/identity.md. Zero disables this delegation.
	NodeProxy types.NamespacedName
}

// Server is the identity service. It implements manager.Runnable and manager.LeaderElectionRunnable.
type Server struct {
	opts     Options
	reviewer TokenReviewer
	clock    clock.PassiveClock
	log      logr.Logger
	metrics  *metrics

	issuer  atomic.Pointer[issuer]
	serving atomic.Pointer[servingCert]

	started atomic.Bool
}

// New validates opts, applies defaults and returns a Server. Nothing runs until Start.
func New(opts Options) (*Server, error) {
	if err := spiffe.ValidateTrustDomain(opts.TrustDomain); err != nil {
		return nil, fmt.Errorf("identity server: trust domain: %w", err)
	}
	if opts.IssuerSecret.Name == "" || opts.IssuerSecret.Namespace == "" {
		return nil, errors.New("identity server: IssuerSecret is required")
	}
	if opts.Client == nil && opts.TokenReviewer == nil {
		return nil, errors.New("identity server: Client is required")
	}
	if opts.NodeProxy.Name != "" && opts.Client == nil {
		return nil, errors.New("identity server: Client is required to authorize node proxies")
	}
	if opts.Audience == "" {
		opts.Audience = identity.Audience
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.LeafLifetime <= 0 {
		opts.LeafLifetime = DefaultLeafLifetime
	}
	if opts.Backdate == 0 {
		opts.Backdate = DefaultBackdate
	} else if opts.Backdate < 0 {
		opts.Backdate = 0
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = DefaultShutdownTimeout
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Rand == nil {
		opts.Rand = rand.Reader
	}
	if opts.Logger.GetSink() == nil {
		opts.Logger = logr.Discard()
	}
	s := &Server{opts: opts, reviewer: opts.TokenReviewer, clock: opts.Clock, log: opts.Logger}
	if s.reviewer == nil {
		s.reviewer = opts.Client.AuthenticationV1().TokenReviews()
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	return s, nil
}

// NeedLeaderElection implements manager.LeaderElectionRunnable: every replica serves.
func (s *Server) NeedLeaderElection() bool { return false }

// ReadyCheck reports an error until both the issuer and the serving certificate are loaded; it fits
// manager.AddReadyzCheck.
func (s *Server) ReadyCheck(*http.Request) error {
	if s.issuer.Load() == nil {
		return fmt.Errorf("identity issuer Secret %s not loaded", s.opts.IssuerSecret)
	}
	if s.serving.Load() == nil {
		return fmt.Errorf("serving certificate Secret %s not loaded", s.opts.ServingSecret)
	}
	return nil
}

// Start implements manager.Runnable: it watches the Secrets and serves HTTPS until ctx ends, then shuts down
// gracefully within ShutdownTimeout. It returns nil after a shutdown caused by ctx, or the error that stopped it.
func (s *Server) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("identity server: already started")
	}
	fail := func(err error) error {
		if s.opts.Listener != nil {
			_ = s.opts.Listener.Close()
		}
		return err
	}
	if s.opts.Client == nil {
		return fail(errors.New("identity server: Client is required to watch Secrets"))
	}
	if s.opts.ServingSecret.Name == "" || s.opts.ServingSecret.Namespace == "" {
		return fail(errors.New("identity server: ServingSecret is required"))
	}
	ln := s.opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.opts.Addr); err != nil {
			return fmt.Errorf("identity server: %w", err)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.watchSecret(ctx, s.opts.IssuerSecret, s.issuerHandler()) })
	wg.Go(func() { s.watchSecret(ctx, s.opts.ServingSecret, s.servingHandler()) })

	srv := &http.Server{
		Handler: s.Handler(),
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS13,
			GetCertificate: s.getCertificate,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    identity.MaxTokenBytes + 16<<10,
		ErrorLog:          log.New(logWriter{s.log}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	serveErr := make(chan error, 1)
	wg.Go(func() { serveErr <- srv.ServeTLS(ln, "", "") })
	s.log.Info("Serving identity service", "address", ln.Addr().String(), "trustDomain", s.opts.TrustDomain)

	select {
	case <-ctx.Done():
		shutdownCtx, stop := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ShutdownTimeout)
		defer stop()
		if err := srv.Shutdown(shutdownCtx); err != nil {
			_ = srv.Close()
		}
		if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error(err, "Identity service stopped with an error")
		}
		s.log.Info("Stopped identity service")
		return nil
	case err := <-serveErr:
		cancel()
		return fmt.Errorf("identity server: %w", err)
	}
}

func (s *Server) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c := s.serving.Load(); c != nil {
		return c.cert, nil
	}
	return nil, errors.New("identity server: serving certificate not loaded")
}

// logWriter sends net/http's server error log (mostly TLS handshake failures of scanners and probes) to V(1).
type logWriter struct{ log logr.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.V(1).Info("HTTP server error", "error", strings.TrimSpace(string(p)))
	return len(p), nil
}
