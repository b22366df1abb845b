package generate

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// grant is the rules one ServiceAccount gets, cluster-wide (clusterPermissions) or in the install namespace
// (permissions).
type grant struct {
	ServiceAccountName string              `json:"serviceAccountName"`
	Rules              []rbacv1.PolicyRule `json:"rules"`
}

// binding is a ClusterRoleBinding (cluster true) or a RoleBinding, reduced to what the CSV needs.
type binding struct {
	kind, name, namespace string
	cluster               bool
	roleRef               rbacv1.RoleRef
	subjects              []rbacv1.Subject
}

// bindings lists the ClusterRoleBindings, then the RoleBindings, each sorted by role name so that the CSV's rules
// come in a stable order.
func (r *rbacObjects) bindings() []binding {
	var out []binding
	for _, b := range r.clusterRoleBindings {
		out = append(out, binding{"ClusterRoleBinding", b.Name, "", true, b.RoleRef, b.Subjects})
	}
	for _, b := range r.roleBindings {
		out = append(out, binding{"RoleBinding", b.Name, b.Namespace, false, b.RoleRef, b.Subjects})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].cluster != out[j].cluster {
			return out[i].cluster
		}
		return out[i].roleRef.Name < out[j].roleRef.Name
	})
	return out
}

// rules returns the rules of the role a binding refers to.
func (r *rbacObjects) rules(b binding) ([]rbacv1.PolicyRule, error) {
	switch {
	case b.roleRef.Kind == "ClusterRole" && r.clusterRoles[b.roleRef.Name] != nil:
		return r.clusterRoles[b.roleRef.Name].Rules, nil
	case b.roleRef.Kind == "Role" && !b.cluster && r.roles[b.roleRef.Name] != nil:
		return r.roles[b.roleRef.Name].Rules, nil
	}
	return nil, fmt.Errorf("%s %s: %s %s is not in the install", b.kind, b.name, b.roleRef.Kind, b.roleRef.Name)
}

// permissions folds the roles bound to the deployments' ServiceAccounts into the CSV's clusterPermissions (from
// ClusterRoleBindings) and permissions (from RoleBindings), as operator-sdk does: OLM then creates the
// ServiceAccounts, roles and bindings itself, in the namespace it installs into. Whatever is not bound to those
// ServiceAccounts (a role for Prometheus to bind, say) is returned as extra objects for the bundle.
func (r *rbacObjects) permissions(sas map[string]bool, ns string) (cluster, local []grant,
	extra []*unstructured.Unstructured, err error) {
	granted := map[bool]map[string][]rbacv1.PolicyRule{true: {}, false: {}} // cluster-wide? -> SA -> rules
	used := map[string]bool{}                                               // kind/name of objects the CSV absorbs
	var errs []error
	for _, b := range r.bindings() {
		bound, err := boundTo(b.subjects, sas, ns)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", b.kind, b.name, err))
		}
		if len(bound) == 0 {
			continue
		}
		if !b.cluster && b.namespace != ns {
			errs = append(errs, fmt.Errorf("RoleBinding %s is in namespace %q: a CSV grants namespaced permissions "+
				"only in the namespace the operator is installed in (%q)", b.name, b.namespace, ns))
			continue
		}
		rules, err := r.rules(b)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, sa := range bound {
			granted[b.cluster][sa] = appendRules(granted[b.cluster][sa], rules)
		}
		used[b.kind+"/"+b.name], used[b.roleRef.Kind+"/"+b.roleRef.Name] = true, true
	}
	for sa := range sas {
		if len(granted[true][sa]) == 0 && len(granted[false][sa]) == 0 {
			errs = append(errs, fmt.Errorf("ServiceAccount %s is bound to no role: OLM creates a Deployment's "+
				"ServiceAccount only for an entry in permissions or clusterPermissions", sa))
		}
		used["ServiceAccount/"+sa] = true
	}
	for key, o := range r.raw {
		if !used[key] {
			extra = append(extra, withoutNamespace(o))
		}
	}
	return grants(granted[true]), grants(granted[false]), extra, errors.Join(errs...)
}

// boundTo returns the subjects that are deployment ServiceAccounts. A binding that mixes them with other subjects
// cannot be split between the CSV and a standalone object, so it is an error.
func boundTo(subjects []rbacv1.Subject, sas map[string]bool, ns string) ([]string, error) {
	var bound []string
	others := 0
	for _, s := range subjects {
		if s.Kind == rbacv1.ServiceAccountKind && s.Namespace == ns && sas[s.Name] {
			bound = append(bound, s.Name)
		} else {
			others++
		}
	}
	if len(bound) > 0 && others > 0 {
		return nil, errors.New("binds the manager's ServiceAccount and other subjects: split it in two")
	}
	return bound, nil
}

// appendRules appends the rules that are not already there, in order.
func appendRules(to, rules []rbacv1.PolicyRule) []rbacv1.PolicyRule {
	seen := map[string]bool{}
	for _, r := range to {
		seen[ruleKey(r)] = true
	}
	for _, r := range rules {
		if k := ruleKey(r); !seen[k] {
			seen[k] = true
			to = append(to, r)
		}
	}
	return to
}

func ruleKey(r rbacv1.PolicyRule) string {
	data, _ := json.Marshal(r)
	return string(data)
}

func grants(m map[string][]rbacv1.PolicyRule) []grant {
	var out []grant
	for sa, rules := range m {
		out = append(out, grant{ServiceAccountName: sa, Rules: rules})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ServiceAccountName < out[j].ServiceAccountName })
	return out
}
