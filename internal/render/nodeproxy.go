package render

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/inject"
	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// ComponentNodeProxy labels the objects of a mesh's node proxy (DaemonSet mode).
const ComponentNodeProxy = "node-proxy"

// NodeProxyAppName is the app.kubernetes.io/name label of node proxy pods.
const NodeProxyAppName = "trellis-node-proxy"

// Paths and names inside the node proxy's pod.
const (
	// NodeProxyContainerName is the node proxy's container.
	NodeProxyContainerName = "node-proxy"
	// NetNSVolumeName is the host's folder of pod network namespaces, mounted at NetNSDir.
	NetNSVolumeName = "netns"
	// NetNSDir is where the node proxy sees the pods' network namespaces.
	NetNSDir = "/var/run/netns"
	// NetNSHostDir is where containerd (and CNI's netns helpers) mount the pods' network namespaces on the host:
	// /var/run/netns, named by its usual target because /var/run is a symlink to /run and the runtime checks the
	// mount propagation of the path as given (a HostToContainer mount needs a shared or slave mount at the source).
	NetNSHostDir = "/run/netns"
)

var (
	daemonSetType          = metav1.TypeMeta{APIVersion: appsv1.SchemeGroupVersion.String(), Kind: "DaemonSet"}
	serviceAccountType     = metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"}
	clusterRoleType        = metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRole"}
	clusterRoleBindingType = metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRoleBinding"}
	roleType               = metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "Role"}
	roleBindingType        = metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "RoleBinding"}
)

// NodeProxyName is the name of the node proxy's ServiceAccount, Role, RoleBinding and DaemonSet in the control-plane
// namespace; the identity service lets tokens of that ServiceAccount hold the identities of the pods on their node.
func NodeProxyName(m *meshv1alpha1.Mesh) string { return m.Name + "-node-proxy" }

// NodeProxyClusterRoleName is the name of the node proxy's ClusterRole and ClusterRoleBinding (cluster-scoped, so
// prefixed).
func NodeProxyClusterRoleName(m *meshv1alpha1.Mesh) string {
	return "trellis-" + m.Name + "-node-proxy"
}

// NodeProxyConfigName is the first ConfigMap of the proxy configuration in the control-plane namespace, which the
// node proxy reads (a pod reads only its own namespace's ConfigMaps); further shards carry -1, -2, ...
func NodeProxyConfigName(m *meshv1alpha1.Mesh) string { return m.Name + "-proxy-config" }

// nodeProxyConfigNames returns the ConfigMap names the node proxy's configuration may span.
func nodeProxyConfigNames(m *meshv1alpha1.Mesh) []string {
	names := make([]string, 0, wellknown.MaxProxyConfigMaps)
	for i := range wellknown.MaxProxyConfigMaps {
		name := NodeProxyConfigName(m)
		if i > 0 {
			name = fmt.Sprintf("%s-%d", name, i)
		}
		names = append(names, name)
	}
	return names
}

// NodeProxyConfigMaps renders the proxy configuration ConfigMaps of the control-plane namespace, for the node
// proxy: the data of EncodeProxyConfig under NodeProxyConfigName, -1, ..., each with the hash in
// AnnotationConfigHash.
func NodeProxyConfigMaps(mesh *meshv1alpha1.Mesh, shards []map[string]string, hash string) []*corev1.ConfigMap {
	names := nodeProxyConfigNames(mesh)
	out := make([]*corev1.ConfigMap, 0, len(shards))
	for i, data := range shards {
		cm := &corev1.ConfigMap{TypeMeta: configMapType,
			ObjectMeta: meta(mesh, mesh.Spec.ControlPlaneNamespace, names[i], ComponentProxyConfig), Data: data}
		cm.Annotations = map[string]string{AnnotationConfigHash: hash}
		out = append(out, cm)
	}
	return out
}

// NodeProxy renders the node proxy of a mesh in DaemonSet mode, in the control-plane namespace: its ServiceAccount;
// a ClusterRole and binding to get, list and watch pods (it watches the pods of its node); a Role and binding to
// read its configuration ConfigMaps; and the DaemonSet. image is the proxy image the manager was started with;
// spec.proxy.image overrides it. The proxy runs privileged (it enters the pods' network namespaces), on every node
// (it tolerates every taint), with the host's /run/netns (/var/run/netns) mounted with HostToContainer propagation
// so that namespaces created after it started appear in it.
func NodeProxy(mesh *meshv1alpha1.Mesh, image string) []client.Object {
	ns, name := mesh.Spec.ControlPlaneNamespace, NodeProxyName(mesh)
	sa := &corev1.ServiceAccount{TypeMeta: serviceAccountType, ObjectMeta: meta(mesh, ns, name, ComponentNodeProxy)}
	subject := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}}
	clusterRole := &rbacv1.ClusterRole{TypeMeta: clusterRoleType,
		ObjectMeta: meta(mesh, "", NodeProxyClusterRoleName(mesh), ComponentNodeProxy),
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"},
			Verbs: []string{"get", "list", "watch"}}},
	}
	clusterBinding := &rbacv1.ClusterRoleBinding{TypeMeta: clusterRoleBindingType,
		ObjectMeta: meta(mesh, "", NodeProxyClusterRoleName(mesh), ComponentNodeProxy),
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: NodeProxyClusterRoleName(mesh)},
		Subjects:   subject,
	}
	role := &rbacv1.Role{TypeMeta: roleType, ObjectMeta: meta(mesh, ns, name, ComponentNodeProxy),
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"},
			ResourceNames: nodeProxyConfigNames(mesh), Verbs: []string{"get", "list", "watch"}}},
	}
	binding := &rbacv1.RoleBinding{TypeMeta: roleBindingType, ObjectMeta: meta(mesh, ns, name, ComponentNodeProxy),
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name}, Subjects: subject}
	return []client.Object{sa, clusterRole, clusterBinding, role, binding, nodeProxyDaemonSet(mesh, image)}
}

// nodeProxyDaemonSet is the node proxy's DaemonSet.
func nodeProxyDaemonSet(mesh *meshv1alpha1.Mesh, image string) *appsv1.DaemonSet {
	p := inject.ParamsFromMesh(mesh, inject.Images{Proxy: image})
	selector := map[string]string{"app.kubernetes.io/name": NodeProxyAppName, LabelMesh: mesh.Name}
	podLabels := map[string]string{LabelComponent: ComponentNodeProxy, wellknown.LabelInject: wellknown.InjectDisabled}
	for k, v := range selector {
		podLabels[k] = v
	}
	probe := func(path string, period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(p.AdminPort), Scheme: corev1.URISchemeHTTP}},
			TimeoutSeconds: 1, PeriodSeconds: period, SuccessThreshold: 1, FailureThreshold: failures,
		}
	}
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}}
	}
	sources := make([]corev1.VolumeProjection, 0, wellknown.MaxProxyConfigMaps)
	for _, n := range nodeProxyConfigNames(mesh) {
		sources = append(sources, corev1.VolumeProjection{ConfigMap: &corev1.ConfigMapProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: n}, Optional: ptr.To(true)}})
	}
	container := corev1.Container{
		Name:            NodeProxyContainerName,
		Image:           p.ProxyImage,
		ImagePullPolicy: p.PullPolicy,
		Args:            []string{"--mode=node"},
		Env: []corev1.EnvVar{
			{Name: inject.EnvLogLevel, Value: p.LogLevel},
			{Name: inject.EnvOutboundAddr, Value: fmt.Sprintf(":%d", p.OutboundPort)},
			{Name: inject.EnvInboundAddr, Value: fmt.Sprintf(":%d", p.InboundPort)},
			{Name: inject.EnvAdminAddr, Value: fmt.Sprintf(":%d", p.AdminPort)},
			{Name: inject.EnvConfigDir, Value: inject.ConfigDir},
			{Name: "TRELLIS_PROXY_CONFIG_NAME", Value: NodeProxyConfigName(mesh)},
			{Name: inject.EnvIdentityAddr, Value: p.IdentityAddr},
			{Name: inject.EnvIdentityServerName, Value: p.IdentityServerName},
			{Name: inject.EnvTrustDomain, Value: p.TrustDomain},
			{Name: inject.EnvTokenFile, Value: inject.TokenDir + "/" + inject.TokenFileName},
			{Name: inject.EnvTrustBundleFile, Value: inject.TrustDir + "/" + wellknown.TrustBundleKey},
			{Name: "TRELLIS_PROXY_NETNS_DIR", Value: NetNSDir},
			field("TRELLIS_PROXY_NODE_NAME", "spec.nodeName"),
			field(inject.EnvPodNamespace, "metadata.namespace"),
			field(inject.EnvPodName, "metadata.name"),
			field(inject.EnvPodIP, "status.podIP"),
		},
		Ports:          []corev1.ContainerPort{{Name: inject.AdminPortName, ContainerPort: p.AdminPort, Protocol: corev1.ProtocolTCP}},
		Resources:      *p.Resources.DeepCopy(),
		ReadinessProbe: probe("/ready", 5, 3),
		LivenessProbe:  probe("/live", 10, 3),
		VolumeMounts: []corev1.VolumeMount{
			{Name: inject.ConfigVolumeName, MountPath: inject.ConfigDir, ReadOnly: true},
			{Name: inject.TrustVolumeName, MountPath: inject.TrustDir, ReadOnly: true},
			{Name: inject.TokenVolumeName, MountPath: inject.TokenDir, ReadOnly: true},
			{Name: NetNSVolumeName, MountPath: NetNSDir, ReadOnly: true,
				MountPropagation: ptr.To(corev1.MountPropagationHostToContainer)},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		// Entering other network namespaces (setns) needs CAP_SYS_ADMIN over them: the node proxy is privileged.
		SecurityContext: &corev1.SecurityContext{
			Privileged: ptr.To(true), RunAsUser: ptr.To[int64](0), RunAsNonRoot: ptr.To(false),
			ReadOnlyRootFilesystem: ptr.To(true),
		},
	}
	return &appsv1.DaemonSet{
		TypeMeta:   daemonSetType,
		ObjectMeta: meta(mesh, mesh.Spec.ControlPlaneNamespace, NodeProxyName(mesh), ComponentNodeProxy),
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: selector},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: map[string]string{
					inject.AnnotationPrometheusScrape: "true",
					inject.AnnotationPrometheusPort:   fmt.Sprint(p.AdminPort),
					inject.AnnotationPrometheusPath:   "/metrics",
				}},
				Spec: corev1.PodSpec{
					ServiceAccountName: NodeProxyName(mesh),
					Tolerations:        []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers:         []corev1.Container{container},
					Volumes: []corev1.Volume{
						{Name: inject.ConfigVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: sources}}},
						{Name: inject.TrustVolumeName, VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: TrustAnchorRecordName(mesh)}, Optional: ptr.To(false)}}},
						{Name: inject.TokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
							Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
								Audience: wellknown.IdentityAudience, ExpirationSeconds: ptr.To[int64](inject.TokenExpirationSeconds),
								Path: inject.TokenFileName}}}}}},
						{Name: NetNSVolumeName, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
							Path: NetNSHostDir, Type: ptr.To(corev1.HostPathDirectoryOrCreate)}}},
					},
				},
			},
		},
	}
}
