// Package controllers holds the MeshReconciler, the single reconciler that turns Mesh, MeshPolicy and
// TrafficSplit objects into the objects a mesh needs, and reports what it did in their status.
package controllers

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/meshns"
	"github.com/trellis-mesh/trellis/internal/validation"
)

// FieldOwner is the field manager of every object and status the manager writes.
const FieldOwner = "trellis-manager"

// MeshReconciler reconciles a Mesh: it reads a snapshot of the mesh and everything it selects, renders the
// objects the mesh needs, applies them, and writes the Mesh's status once.
type MeshReconciler struct {
	// Client reads from the manager's cache and writes to the API server.
	Client client.Client
	// APIReader reads objects the manager does not cache (Secrets) straight from the API server.
	APIReader client.Reader
	// Recorder emits Events on user-facing failures; nil disables them.
	Recorder events.EventRecorder
	// CertManagerInstalled says whether the API server serves cert-manager.io/v1 (see CertManagerServed). Without
	// it the Mesh reports IdentityReady=False and renders no certificates.
	CertManagerInstalled bool
	// Clock tells the time (certificate expiry); default: the real clock.
	Clock clock.PassiveClock
	// ClusterDomain is the cluster's DNS domain; default: cluster.local.
	ClusterDomain string
	// GatewayAPIInstalled says whether the API server serves Gateway API HTTPRoutes (see GatewayAPIServed).
	GatewayAPIInstalled bool
	// Injection configures the proxy injector registered for every Mesh.
	Injection Injection
	// ProxyImage is the proxy image the manager was started with (its --proxy-image flag): the node proxy's image
	// in DaemonSet mode unless the Mesh names its own (spec.proxy.image).
	ProxyImage string
	// IdentityMesh names the Mesh whose certificates the manager's identity service issues (its --identity-mesh
	// flag). Any other Mesh reports IdentityReady=False (IdentityServiceElsewhere): its proxies could never become
	// ready. Default "": no identity service in this manager, no such check.
	IdentityMesh string

	applier *applier
}

// meshScope is the state of one reconcile: the Mesh as read, the snapshot, what the phases rendered, and the
// status being built.
type meshScope struct {
	mesh       *meshv1alpha1.Mesh
	original   *meshv1alpha1.Mesh
	namespaces []string
	// unmeshed are the namespaces no Mesh owns, when this Mesh is the oldest (it reports on the policies and splits
	// there); nil otherwise.
	unmeshed map[string]bool
	// desired are the objects the phases rendered; prunable are the kinds and components rendered completely.
	desired  []client.Object
	prunable []pruneScope
	// shards and configHash are the encoded proxy configuration (nil when it could not be rendered), pods the pods
	// of the mesh's namespaces: the node proxy phase renders and counts from them.
	shards     []map[string]string
	configHash string
	pods       []corev1.Pod
	// stop ends the reconcile after the current phase (a spec the renderer must not act on).
	stop bool
	// retry asks for another reconcile after this long (0: only on events).
	retry time.Duration
}

// requeueAfter asks for another reconcile within d.
func (s *meshScope) requeueAfter(d time.Duration) {
	if s.retry == 0 || d < s.retry {
		s.retry = d
	}
}

// identityNotReady records why the identity cannot be ready and asks to look again later.
func (s *meshScope) identityNotReady(reason, message string) {
	setCondition(&s.mesh.Status.Conditions, s.mesh.Generation, meshv1alpha1.ConditionIdentityReady, false, reason, message)
	s.requeueAfter(identityRetry)
}

var (
	certificateGVK = cmapi.SchemeGroupVersion.WithKind(cmapi.CertificateKind)
	issuerGVK      = cmapi.SchemeGroupVersion.WithKind(cmapi.IssuerKind)
	configMapGVK   = corev1.SchemeGroupVersion.WithKind("ConfigMap")
)

func (r *MeshReconciler) now() time.Time {
	if r.Clock == nil {
		return time.Now()
	}
	return r.Clock.Now()
}

// phase is one ordered step of a reconcile. It records its outcome in the scope's status; an error aborts the
// reconcile and is retried with backoff.
type phase func(ctx context.Context, s *meshScope) error

// +kubebuilder:rbac:groups=mesh.trellis.io,resources=meshes;meshpolicies;trafficsplits,verbs=get;list;watch
// +kubebuilder:rbac:groups=mesh.trellis.io,resources=meshes/status;meshpolicies/status;trafficsplits/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups="";events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificates;issuers,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=cert-manager.io,resources=clusterissuers,verbs=get;list;watch

// Reconcile brings one Mesh to its desired state and writes its status once, in a deferred step, only when the
// status changed.
func (r *MeshReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, err error) {
	log := ctrl.LoggerFrom(ctx)
	mesh := &meshv1alpha1.Mesh{}
	if err := r.Client.Get(ctx, req.NamespacedName, mesh); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !mesh.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	s := &meshScope{mesh: mesh, original: mesh.DeepCopy()}
	defer func() {
		if perr := r.writeStatus(ctx, s); perr != nil && err == nil {
			err = perr
		}
	}()
	for _, run := range []phase{r.validate, r.selectNamespaces, r.reconcileIdentity, r.reconcileProxyConfig,
		r.reconcileNodeProxy, r.reconcileWebhook, r.applyAndPrune} {
		if err := run(ctx, s); err != nil {
			log.Error(err, "Reconcile phase failed", "mesh", klog.KObj(mesh))
			return ctrl.Result{}, err
		}
		if s.stop {
			break
		}
	}
	return ctrl.Result{RequeueAfter: s.retry}, nil
}

// applyAndPrune applies what the phases rendered and prunes what the mesh owns and no longer renders. A failure
// is shown in ConfigReady with the API server's message and retried.
func (r *MeshReconciler) applyAndPrune(ctx context.Context, s *meshScope) error {
	if r.applier == nil {
		r.applier = newApplier(r.Client)
	}
	if err := r.applier.apply(ctx, s.desired); err != nil {
		r.event(s.mesh, corev1.EventTypeWarning, meshv1alpha1.ReasonApplyFailed, err.Error())
		return err
	}
	return r.applier.prune(ctx, s.mesh.Name, s.prunable, s.desired)
}

// validate checks the cross-field rules the API server cannot check and sets Accepted accordingly.
func (r *MeshReconciler) validate(_ context.Context, s *meshScope) error {
	m := s.mesh
	if errs := validation.Mesh(m); len(errs) > 0 {
		msg := errs.ToAggregate().Error() + ". Until it is fixed, the objects rendered from the last valid spec stay in place."
		setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionAccepted, false, meshv1alpha1.ReasonInvalidSpec, msg)
		r.event(m, corev1.EventTypeWarning, meshv1alpha1.ReasonInvalidSpec, msg)
		s.stop = true
		return nil
	}
	setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionAccepted, true, meshv1alpha1.ReasonAccepted, "The Mesh is valid")
	return nil
}

// selectNamespaces finds the namespaces the mesh owns. A namespace an older Mesh already selects stays with that
// Mesh; the conflict is reported in Accepted with the namespaces and the other Mesh named.
func (r *MeshReconciler) selectNamespaces(ctx context.Context, s *meshScope) error {
	m := s.mesh
	var nsList corev1.NamespaceList
	if err := r.Client.List(ctx, &nsList); err != nil {
		return fmt.Errorf("listing namespaces: %w", err)
	}
	var meshes meshv1alpha1.MeshList
	if err := r.Client.List(ctx, &meshes); err != nil {
		return fmt.Errorf("listing meshes: %w", err)
	}
	owned, taken := meshns.Claims(m, meshes.Items, nsList.Items)
	s.namespaces = owned
	if meshns.Oldest(meshes.Items) == m.Name {
		s.unmeshed = meshns.Unowned(meshes.Items, nsList.Items)
	}
	m.Status.MeshedNamespaces = int32(len(owned))
	if len(taken) > 0 && isAccepted(m) {
		msg := conflictMessage(taken)
		setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionAccepted, false, meshv1alpha1.ReasonNamespaceConflict, msg)
		r.event(m, corev1.EventTypeWarning, meshv1alpha1.ReasonNamespaceConflict, msg)
	}
	return nil
}

func isAccepted(m *meshv1alpha1.Mesh) bool {
	return meta.IsStatusConditionTrue(m.Status.Conditions, meshv1alpha1.ConditionAccepted)
}

// conflictMessage tells the user which namespaces another Mesh owns and how to resolve it.
func conflictMessage(taken map[string]string) string {
	byMesh := map[string][]string{}
	for ns, owner := range taken {
		byMesh[owner] = append(byMesh[owner], ns)
	}
	owners := make([]string, 0, len(byMesh))
	for owner := range byMesh {
		owners = append(owners, owner)
	}
	sort.Strings(owners)
	parts := make([]string, 0, len(owners))
	for _, owner := range owners {
		sort.Strings(byMesh[owner])
		parts = append(parts, fmt.Sprintf("the older Mesh %q already owns namespace(s) %s", owner, strings.Join(byMesh[owner], ", ")))
	}
	return strings.Join(parts, "; ") + ": they are left out of this Mesh. " +
		"Narrow spec.namespaceSelector so that every namespace belongs to one Mesh."
}

// writeStatus computes Ready and the counts, and patches the status when it changed. A steady state writes nothing.
func (r *MeshReconciler) writeStatus(ctx context.Context, s *meshScope) error {
	m := s.mesh
	m.Status.ObservedGeneration = m.Generation
	m.Status.Proxies.Summary = fmt.Sprintf("%d/%d", m.Status.Proxies.Ready, m.Status.Proxies.Desired)
	chain := []check{
		conditionTrue(meshv1alpha1.ConditionAccepted),
		conditionTrue(meshv1alpha1.ConditionIdentityReady),
		conditionTrue(meshv1alpha1.ConditionConfigReady),
		conditionTrue(meshv1alpha1.ConditionProxiesReady),
	}
	if r.Injection.Enabled {
		chain = append(chain, conditionTrue(meshv1alpha1.ConditionWebhookReady))
	}
	reason, message, ok := runChain(m.Status.Conditions, chain...)
	if ok {
		reason = meshv1alpha1.ReasonReady
		message = fmt.Sprintf("The Mesh covers %d namespace(s)", len(s.namespaces))
		if len(s.namespaces) == 0 {
			message += "; label a namespace trellis.io/inject=enabled (or match spec.namespaceSelector) to adopt it"
		}
	}
	setCondition(&m.Status.Conditions, m.Generation, meshv1alpha1.ConditionReady, ok, reason, message)
	if equality.Semantic.DeepEqual(s.original.Status, m.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, m, client.MergeFrom(s.original), client.FieldOwner(FieldOwner)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("writing Mesh status: %w", err)
	}
	return nil
}

func (r *MeshReconciler) event(m *meshv1alpha1.Mesh, eventType, reason, note string) {
	if r.Recorder == nil {
		return
	}
	r.Recorder.Eventf(m, nil, eventType, reason, "Reconcile", "%s", note)
}

// SetupWithManager registers the reconciler and its watches: Meshes, and Namespaces mapped to every Mesh (a label
// change can move a namespace into or out of any mesh). A Mesh event also requeues the other Meshes, whose
// namespace conflicts depend on it.
func (r *MeshReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Recorder == nil {
		r.Recorder = mgr.GetEventRecorder("trellis-manager")
	}
	if r.APIReader == nil {
		r.APIReader = mgr.GetAPIReader()
	}
	r.applier = newApplier(r.Client)
	b := ctrl.NewControllerManagedBy(mgr).
		Named("mesh").
		For(&meshv1alpha1.Mesh{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&meshv1alpha1.Mesh{}, handler.EnqueueRequestsFromMapFunc(r.allMeshes),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.allMeshes),
			builder.WithPredicates(predicate.Or(predicate.LabelChangedPredicate{}, namespacePhaseChanged()))).
		Owns(&corev1.ConfigMap{}).
		Owns(&admissionregistrationv1.MutatingWebhookConfiguration{}).
		Owns(&rbacv1.Role{}).
		Owns(&rbacv1.RoleBinding{}).
		Owns(&appsv1.DaemonSet{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&rbacv1.ClusterRole{}).
		Owns(&rbacv1.ClusterRoleBinding{}).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(r.meshOfNamespace)).
		Watches(&discoveryv1.EndpointSlice{}, handler.EnqueueRequestsFromMapFunc(r.meshOfNamespace)).
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.meshOfNamespace), builder.WithPredicates(podChanged())).
		Watches(&meshv1alpha1.MeshPolicy{}, handler.EnqueueRequestsFromMapFunc(r.meshOfNamespace),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&meshv1alpha1.TrafficSplit{}, handler.EnqueueRequestsFromMapFunc(r.meshOfNamespace),
			builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	if r.CertManagerInstalled {
		b = b.Owns(&cmapi.Certificate{}).Owns(&cmapi.Issuer{})
	}
	if r.GatewayAPIInstalled {
		b = b.Watches(&gatewayv1.HTTPRoute{}, handler.EnqueueRequestsFromMapFunc(r.meshOfNamespace),
			builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	}
	return b.Complete(r)
}

// CertManagerServed reports whether the API server serves cert-manager.io/v1 Certificates. The manager checks it
// at start: watches on a kind the API server does not serve would keep the manager from starting.
func CertManagerServed(mapper meta.RESTMapper) bool {
	_, err := mapper.RESTMapping(certificateGVK.GroupKind(), certificateGVK.Version)
	return err == nil
}

// namespacePhaseChanged passes namespace creations, deletions and phase changes (a namespace that starts
// terminating leaves its mesh).
func namespacePhaseChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			oldNs, okOld := e.ObjectOld.(*corev1.Namespace)
			newNs, okNew := e.ObjectNew.(*corev1.Namespace)
			return okOld && okNew && oldNs.Status.Phase != newNs.Status.Phase
		},
	}
}

// meshOfNamespace maps an event on a namespaced object to the Mesh that owns its namespace (or, when none does,
// to the oldest Mesh, which reports that the object is not meshed).
func (r *MeshReconciler) meshOfNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	var meshes meshv1alpha1.MeshList
	var namespaces corev1.NamespaceList
	if err := r.Client.List(ctx, &meshes); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing meshes to requeue failed")
		return nil
	}
	if len(meshes.Items) == 0 {
		return nil
	}
	if err := r.Client.List(ctx, &namespaces); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing namespaces to requeue failed")
		return nil
	}
	if name := owningMesh(obj.GetNamespace(), meshes.Items, namespaces.Items); name != "" {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: name}}}
	}
	return nil
}

// podChanged passes pod events that change what the mesh renders or counts: creation, deletion, and changes of
// labels, annotations, ServiceAccount, phase or container readiness.
func podChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, okOld := e.ObjectOld.(*corev1.Pod)
			n, okNew := e.ObjectNew.(*corev1.Pod)
			if !okOld || !okNew {
				return true
			}
			return !equality.Semantic.DeepEqual(o.Labels, n.Labels) ||
				!equality.Semantic.DeepEqual(o.Annotations, n.Annotations) ||
				o.Spec.ServiceAccountName != n.Spec.ServiceAccountName ||
				o.Status.Phase != n.Status.Phase ||
				!equality.Semantic.DeepEqual(o.Status.ContainerStatuses, n.Status.ContainerStatuses) ||
				!equality.Semantic.DeepEqual(o.Status.InitContainerStatuses, n.Status.InitContainerStatuses)
		},
	}
}

// allMeshes maps any event to a request for every Mesh.
func (r *MeshReconciler) allMeshes(ctx context.Context, _ client.Object) []reconcile.Request {
	var meshes meshv1alpha1.MeshList
	if err := r.Client.List(ctx, &meshes); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "Listing meshes to requeue failed")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(meshes.Items))
	for i := range meshes.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Name: meshes.Items[i].Name}})
	}
	return reqs
}
