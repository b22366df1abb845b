// Command manager runs the Trellis control plane: the Mesh reconciler, and (as they land) the identity service
// and the injection webhook, with health probes, metrics and leader election.
package main

import (
	"flag"
	"os"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/controllers"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/render"
)

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	var (
		metricsAddr       string
		metricsSecure     bool
		probeAddr         string
		leaderElect       bool
		leaderElectNS     string
		identityMesh      string
		identityAddr      string
		clusterDomain     string
		injection         bool
		webhookPort       int
		webhookDir        string
		webhookSvc        string
		webhookSvcNS      string
		webhookSecret     string
		webhookCertCreate bool
		proxyImage        string
		initImage         string
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "Address of the metrics endpoint; \"0\" disables it.")
	flag.BoolVar(&metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS, authenticated and authorized through the API server.")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz probes.")
	flag.BoolVar(&leaderElect, "leader-elect", false, "Elect a leader so that only one replica reconciles at a time.")
	flag.StringVar(&leaderElectNS, "leader-election-namespace", "", "Namespace of the leader-election Lease; default: the pod's namespace.")
	flag.StringVar(&identityMesh, "identity-mesh", "default", "Name of the Mesh whose workload identities the identity service issues.")
	flag.StringVar(&identityAddr, "identity-bind-address", ":8080", "Address of the identity service; empty disables it.")
	flag.StringVar(&clusterDomain, "cluster-domain", "cluster.local", "The cluster's DNS domain.")
	flag.BoolVar(&injection, "enable-injection", true, "Serve the proxy injector and register it for every Mesh.")
	flag.IntVar(&webhookPort, "webhook-port", 9443, "Port of the webhook server.")
	flag.StringVar(&webhookDir, "webhook-cert-dir", "/var/run/trellis/webhook-certs", "Folder holding the webhook server's tls.crt and tls.key.")
	flag.StringVar(&webhookSvc, "webhook-service", "trellis-webhook", "Service in front of the webhook server.")
	flag.StringVar(&webhookSvcNS, "webhook-service-namespace", envOr("POD_NAMESPACE", "trellis-system"), "Namespace of the webhook Service and its certificate Secret.")
	flag.StringVar(&webhookSecret, "webhook-cert-secret", "trellis-webhook-cert", "cert-manager's Secret of the webhook certificate; its ca.crt becomes the caBundle.")
	flag.BoolVar(&webhookCertCreate, "create-webhook-certificate", true, "At start, create a self-signed cert-manager Issuer and the webhook's Certificate (writing --webhook-cert-secret) unless a Certificate already writes that Secret (an OLM install has none).")
	flag.StringVar(&proxyImage, "proxy-image", "trellis.io/proxy:dev", "Proxy image injected into meshed pods (a Mesh's spec.proxy.image overrides it).")
	flag.StringVar(&initImage, "proxy-init-image", "trellis.io/proxy-init:dev", "proxy-init image injected into meshed pods.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(meshv1alpha1.AddToScheme(scheme))
	utilruntime.Must(cmapi.AddToScheme(scheme))
	utilruntime.Must(gatewayv1.Install(scheme))

	metricsOpts := metricsserver.Options{BindAddress: metricsAddr, SecureServing: metricsSecure}
	if metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	managed := labels.SelectorFromSet(labels.Set{render.LabelManagedBy: render.ManagedByValue})
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "manager.mesh.trellis.io",
		LeaderElectionNamespace: leaderElectNS,
		// The manager caches only the ConfigMaps it renders, and no Secrets (it reads the few it needs directly).
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&corev1.ConfigMap{}:   {Label: managed},
			&rbacv1.Role{}:        {Label: managed},
			&rbacv1.RoleBinding{}: {Label: managed},
			// The node proxy's objects (DaemonSet mode).
			&appsv1.DaemonSet{}:          {Label: managed},
			&corev1.ServiceAccount{}:     {Label: managed},
			&rbacv1.ClusterRole{}:        {Label: managed},
			&rbacv1.ClusterRoleBinding{}: {Label: managed},
			&corev1.Pod{}:                {Transform: controllers.TrimPod},
		}},
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		log.Error(err, "Creating the manager failed")
		os.Exit(1)
	}
	certManager := controllers.CertManagerServed(mgr.GetRESTMapper())
	if !certManager {
		log.Info("cert-manager is not installed: meshes will report IdentityReady=False until it is and the manager restarts")
	}
	reconciler := &controllers.MeshReconciler{
		Client: mgr.GetClient(), CertManagerInstalled: certManager, ClusterDomain: clusterDomain,
		GatewayAPIInstalled: controllers.GatewayAPIServed(mgr.GetRESTMapper()), ProxyImage: proxyImage,
	}
	if identityAddr != "" {
		reconciler.IdentityMesh = identityMesh
	}
	if injection {
		runner := &controllers.WebhookRunner{
			Server:  webhook.NewServer(webhook.Options{Port: webhookPort, CertDir: webhookDir}),
			CertDir: webhookDir,
			Log:     ctrl.Log.WithName("webhook"),
		}
		images := inject.Images{Proxy: proxyImage, ProxyInit: initImage}
		injector := inject.NewWebhook(mgr.GetClient(), inject.ClientMeshLookup{Reader: mgr.GetClient()}, images, scheme)
		runner.Server.Register(inject.WebhookPath, &webhook.Admission{Handler: injector})
		utilruntime.Must(mgr.Add(runner))
		if webhookCertCreate && certManager {
			utilruntime.Must(mgr.Add(&controllers.WebhookCertificate{
				Client:        mgr.GetClient(),
				Service:       types.NamespacedName{Namespace: webhookSvcNS, Name: webhookSvc},
				SecretName:    webhookSecret,
				ClusterDomain: clusterDomain,
				Log:           ctrl.Log.WithName("webhook-certificate"),
			}))
		}
		reconciler.Injection = controllers.Injection{
			Enabled:       true,
			Service:       types.NamespacedName{Namespace: webhookSvcNS, Name: webhookSvc},
			CASecret:      types.NamespacedName{Namespace: webhookSvcNS, Name: webhookSecret},
			ServerStarted: runner.StartedChecker,
			ServedCA:      runner.ServedCA,
		}
	}
	if err := reconciler.SetupWithManager(mgr); err != nil {
		log.Error(err, "Setting up the Mesh reconciler failed")
		os.Exit(1)
	}
	utilruntime.Must(mgr.AddHealthzCheck("healthz", healthz.Ping))
	utilruntime.Must(mgr.AddReadyzCheck("readyz", healthz.Ping))
	if identityAddr != "" {
		identity := &controllers.IdentityService{
			Reader:     mgr.GetAPIReader(),
			Clientset:  kubernetes.NewForConfigOrDie(mgr.GetConfig()),
			MeshName:   identityMesh,
			Addr:       identityAddr,
			Registerer: crmetrics.Registry,
			Recorder:   mgr.GetEventRecorder("trellis-identity"),
			Log:        ctrl.Log.WithName("identity"),
		}
		utilruntime.Must(mgr.Add(identity))
		utilruntime.Must(mgr.AddReadyzCheck("identity", identity.ReadyCheck))
	}

	log.Info("Starting the manager", "injection", injection)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "The manager stopped with an error")
		os.Exit(1)
	}
}
