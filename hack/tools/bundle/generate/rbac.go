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

// permissions folds the roles bound to the deployments' ServiceAccounts into the CSV's clusterPermissions (from
// ClusterRoleBindings) and permissions (from RoleBindings), as operator-sdk does: OLM then creates the
// ServiceAccounts, roles and bindings itself, in the namespace it installs into. Whatever is not bound to those
// ServiceAccounts (a role for Prometheus to bind, say) is returned as extra objects for the bundle.
func (r *rbacObjects) permissions(sas map[string]bool, ns string) (cluster, local []grant,
	extra []*unstructured.Unstructured, err error) {
	clusterRules := map[string][]rbacv1.PolicyRule{}
	localRules := map[string][]rbacv1.PolicyRule{}
	used := map[string]bool{} // kind/name of roles and bindings the CSV absorbs
	var errs []error

	crbs := append([]*rbacv1.ClusterRoleBinding{}, r.clusterRoleBindings...)
	sort.Slice(crbs, func(i, j int) bool { return crbs[i].RoleRef.Name < crbs[j].RoleRef.Name })
	for _, b := range crbs {
		bound, err := boundTo(b.Subjects, sas, ns)
		if err != nil {
			errs = append(errs, fmt.Errorf("ClusterRoleBinding %s: %w", b.Name, err))
		}
		if len(bound) == 0 {
			continue
		}
		role, ok := r.clusterRoles[b.RoleRef.Name]
		if b.RoleRef.Kind != "ClusterRole" || !ok {
			errs = append(errs, fmt.Errorf("ClusterRoleBinding %s: %s %s is not in the install", b.Name, b.RoleRef.Kind,
				b.RoleRef.Name))
			continue
		}
		for _, sa := range bound {
			clusterRules[sa] = appendRules(clusterRules[sa], role.Rules)
		}
		used["ClusterRoleBinding/"+b.Name], used["ClusterRole/"+role.Name] = true, true
	}

	rbs := append([]*rbacv1.RoleBinding{}, r.roleBindings...)
	sort.Slice(rbs, func(i, j int) bool { return rbs[i].RoleRef.Name < rbs[j].RoleRef.Name })
	for _, b := range rbs {
		bound, err := boundTo(b.Subjects, sas, ns)
		if err != nil {
			errs = append(errs, fmt.Errorf("RoleBinding %s: %w", b.Name, err))
		}
		if len(bound) == 0 {
			continue
		}
		if b.Namespace != ns {
			errs = append(errs, fmt.Errorf("RoleBinding %s is in namespace %q: a CSV grants namespaced permissions "+
				"only in the namespace the operator is installed in (%q)", b.Name, b.Namespace, ns))
			continue
		}
		var rules []rbacv1.PolicyRule
		switch b.RoleRef.Kind {
		case "Role":
			role, ok := r.roles[b.RoleRef.Name]
			if !ok {
				errs = append(errs, fmt.Errorf("RoleBinding %s: Role %s is not in the install", b.Name, b.RoleRef.Name))
				continue
			}
			rules = role.Rules
		case "ClusterRole":
			role, ok := r.clusterRoles[b.RoleRef.Name]
			if !ok {
				errs = append(errs, fmt.Errorf("RoleBinding %s: ClusterRole %s is not in the install", b.Name,
					b.RoleRef.Name))
				continue
			}
			rules = role.Rules
		}
		for _, sa := range bound {
			localRules[sa] = appendRules(localRules[sa], rules)
		}
		used["RoleBinding/"+b.Name], used[b.RoleRef.Kind+"/"+b.RoleRef.Name] = true, true
	}

	for sa := range sas {
		if len(clusterRules[sa]) == 0 && len(localRules[sa]) == 0 {
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
	return grants(clusterRules), grants(localRules), extra, errors.Join(errs...)
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
