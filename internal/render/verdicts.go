package render

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	meshv1alpha1 "github.com/trellis-mesh/trellis/api/v1alpha1"
	"github.com/trellis-mesh/trellis/internal/validation"
)

// Verdict is what the reconciler concluded about one MeshPolicy or TrafficSplit: the Accepted and ResolvedRefs
// conditions it shows the user.
type Verdict struct {
	// Accepted is true when the object is valid, in a meshed namespace and conflicts with no older object.
	Accepted bool
	// AcceptedReason and AcceptedMessage explain Accepted.
	AcceptedReason, AcceptedMessage string
	// ResolvedRefs is true when every Service the object names exists with the ports it names.
	ResolvedRefs bool
	// RefsReason and RefsMessage explain ResolvedRefs.
	RefsReason, RefsMessage string
}

func accepted() Verdict {
	return Verdict{Accepted: true, AcceptedReason: meshv1alpha1.ReasonAccepted, AcceptedMessage: "Accepted",
		ResolvedRefs: true, RefsReason: meshv1alpha1.ReasonResolvedRefs, RefsMessage: "All references resolved"}
}

func refused(reason, message string) Verdict {
	return Verdict{AcceptedReason: reason, AcceptedMessage: message,
		ResolvedRefs: true, RefsReason: meshv1alpha1.ReasonResolvedRefs, RefsMessage: "Not evaluated: the object is not accepted"}
}

func notMeshed(kind, ns string) Verdict {
	return refused(meshv1alpha1.ReasonNotMeshed, fmt.Sprintf("Namespace %s belongs to no Mesh, so nothing enforces this %s: "+
		"label the namespace trellis.io/inject=enabled (or match a Mesh's spec.namespaceSelector)", ns, kind))
}

// servicePorts indexes Services by namespace/name.
type servicePorts map[types.NamespacedName]*corev1.Service

func (s servicePorts) hasPort(key types.NamespacedName, port int32) bool {
	svc := s[key]
	if svc == nil {
		return false
	}
	for _, p := range svc.Spec.Ports {
		if p.Port == port {
			return true
		}
	}
	return false
}

// olderObject orders objects by creation time, then namespace/name: the older one wins a conflict.
func olderObject(a, b metav1.Object) bool {
	ta, tb := a.GetCreationTimestamp(), b.GetCreationTimestamp()
	if !ta.Equal(&tb) {
		return ta.Before(&tb)
	}
	return a.GetNamespace()+"/"+a.GetName() < b.GetNamespace()+"/"+b.GetName()
}

// EvaluatePolicies decides which MeshPolicies are in force. meshed holds the namespaces of the mesh; services the
// Services of those namespaces; routed the Services HTTPRoutes route (RoutedServices): the routes of a policy of such
// a Service do not apply, which its Accepted message says.
func EvaluatePolicies(policies []meshv1alpha1.MeshPolicy, meshed map[string]bool, services []corev1.Service,
	routed map[types.NamespacedName]string) map[types.NamespacedName]Verdict {
	idx := indexServices(services)
	sorted := sortedByAge(policies)
	verdicts := map[types.NamespacedName]Verdict{}
	// claims records, per Service port (0 = every port), the policy that configures it.
	claims := map[types.NamespacedName]map[int32]string{}
	for _, p := range sorted {
		key := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
		switch {
		case !meshed[p.Namespace]:
			verdicts[key] = notMeshed("MeshPolicy", p.Namespace)
			continue
		case len(validation.MeshPolicy(p)) > 0:
			verdicts[key] = refused(meshv1alpha1.ReasonInvalidSpec, validation.MeshPolicy(p).ToAggregate().Error())
			continue
		}
		v := accepted()
		if ref := p.Spec.TargetRef; ref != nil {
			svcKey := types.NamespacedName{Namespace: p.Namespace, Name: ref.Name}
			if conflict := claimPorts(claims, svcKey, p.Spec.Ports, p.Namespace+"/"+p.Name); conflict != "" {
				verdicts[key] = refused(meshv1alpha1.ReasonConflicted, fmt.Sprintf("MeshPolicy %s, which is older, already configures "+
					"Service %s on the same ports: merge the two policies or give them disjoint spec.ports", conflict, ref.Name))
				continue
			}
			v = resolvePolicyTarget(v, idx, svcKey, p.Spec.Ports)
			if route, ok := routed[svcKey]; ok && len(p.Spec.Routes) > 0 {
				v.AcceptedMessage = fmt.Sprintf("Accepted, but spec.routes do not apply: HTTPRoute %s routes Service %s, so "+
					"its rules decide where requests go and requests no rule matches get 404; the policy's timeouts, "+
					"retries, load balancing, circuit breaking and authorization still apply", route, ref.Name)
			}
		}
		verdicts[key] = v
	}
	return verdicts
}

// claimPorts records that owner configures ports of svc and returns the owner of an overlapping earlier claim.
func claimPorts(claims map[types.NamespacedName]map[int32]string, svc types.NamespacedName, ports []int32, owner string) string {
	taken := claims[svc]
	if taken == nil {
		taken = map[int32]string{}
		claims[svc] = taken
	}
	if len(ports) == 0 {
		for _, o := range taken {
			return o
		}
		taken[0] = owner
		return ""
	}
	if o, ok := taken[0]; ok {
		return o
	}
	for _, port := range ports {
		if o, ok := taken[port]; ok {
			return o
		}
	}
	for _, port := range ports {
		taken[port] = owner
	}
	return ""
}

func resolvePolicyTarget(v Verdict, idx servicePorts, svc types.NamespacedName, ports []int32) Verdict {
	if idx[svc] == nil {
		v.ResolvedRefs, v.RefsReason = false, meshv1alpha1.ReasonServiceNotFound
		v.RefsMessage = fmt.Sprintf("Service %s not found in namespace %s: create it or fix spec.targetRef.name; the policy takes effect once it exists", svc.Name, svc.Namespace)
		return v
	}
	var missing []string
	for _, port := range ports {
		if !idx.hasPort(svc, port) {
			missing = append(missing, fmt.Sprint(port))
		}
	}
	if len(missing) > 0 {
		v.ResolvedRefs, v.RefsReason = false, meshv1alpha1.ReasonPortNotFound
		v.RefsMessage = fmt.Sprintf("Service %s has no port %s: fix spec.ports (the Service's ports are %s)", svc.Name,
			strings.Join(missing, ", "), portList(idx[svc]))
	}
	return v
}

func portList(svc *corev1.Service) string {
	ports := make([]string, 0, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		ports = append(ports, fmt.Sprint(p.Port))
	}
	return strings.Join(ports, ", ")
}

// EvaluateSplits decides which TrafficSplits are in force. A split whose root Service is missing is not in force; a
// split with a missing backend is in force, the backend's share fails, and ResolvedRefs says which backend.
//
// routed names the Services HTTPRoutes in force attach to (see RoutedServices): a split of such a Service
// conflicts with the route, which wins.
func EvaluateSplits(splits []meshv1alpha1.TrafficSplit, meshed map[string]bool, services []corev1.Service, routed map[types.NamespacedName]string) map[types.NamespacedName]Verdict {
	idx := indexServices(services)
	verdicts := map[types.NamespacedName]Verdict{}
	roots := map[types.NamespacedName]string{}
	for _, s := range sortedByAge(splits) {
		key := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		root := types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.Service}
		switch {
		case !meshed[s.Namespace]:
			verdicts[key] = notMeshed("TrafficSplit", s.Namespace)
			continue
		case len(validation.TrafficSplit(s)) > 0:
			verdicts[key] = refused(meshv1alpha1.ReasonInvalidSpec, validation.TrafficSplit(s).ToAggregate().Error())
			continue
		case routed[root] != "":
			verdicts[key] = refused(meshv1alpha1.ReasonConflicted, fmt.Sprintf("HTTPRoute %s already routes Service %s: "+
				"express the split as the route's weighted backendRefs, or delete one of them", routed[root], s.Spec.Service))
			continue
		case roots[root] != "":
			verdicts[key] = refused(meshv1alpha1.ReasonConflicted, fmt.Sprintf("TrafficSplit %s, which is older, already splits "+
				"Service %s: merge the two splits' backends into one", roots[root], s.Spec.Service))
			continue
		case idx[root] == nil:
			v := refused(meshv1alpha1.ReasonServiceNotFound, fmt.Sprintf("Root Service %s not found in namespace %s: "+
				"create it or fix spec.service", s.Spec.Service, s.Namespace))
			v.ResolvedRefs, v.RefsReason, v.RefsMessage = false, meshv1alpha1.ReasonServiceNotFound, v.AcceptedMessage
			verdicts[key] = v
			continue
		}
		roots[root] = s.Namespace + "/" + s.Name
		v := accepted()
		var problems []string
		for _, b := range s.Spec.Backends {
			leaf := types.NamespacedName{Namespace: s.Namespace, Name: b.Service}
			if idx[leaf] == nil {
				problems = append(problems, fmt.Sprintf("backend Service %s not found", b.Service))
				continue
			}
			for _, p := range idx[root].Spec.Ports {
				if !idx.hasPort(leaf, p.Port) {
					problems = append(problems, fmt.Sprintf("backend Service %s has no port %d of the root service", b.Service, p.Port))
				}
			}
		}
		if len(problems) > 0 {
			v.ResolvedRefs, v.RefsReason = false, meshv1alpha1.ReasonBackendNotFound
			v.RefsMessage = strings.Join(problems, "; ") + ": requests sent to that share fail with 500 until it is fixed"
		}
		verdicts[key] = v
	}
	return verdicts
}

func indexServices(services []corev1.Service) servicePorts {
	idx := servicePorts{}
	for i := range services {
		idx[types.NamespacedName{Namespace: services[i].Namespace, Name: services[i].Name}] = &services[i]
	}
	return idx
}

// sortedByAge returns pointers to the items ordered oldest first.
func sortedByAge[T any, PT interface {
	*T
	metav1.Object
}](items []T) []PT {
	out := make([]PT, len(items))
	for i := range items {
		out[i] = PT(&items[i])
	}
	sort.SliceStable(out, func(i, j int) bool { return olderObject(out[i], out[j]) })
	return out
}
