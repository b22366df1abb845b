package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// setCondition records a condition stamped with the generation it describes. meta.SetStatusCondition keeps the
// last transition time when the status does not change, so an unchanged condition leaves the status unchanged.
func setCondition(conds *[]metav1.Condition, generation int64, typ string, ok bool, reason, message string) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(conds, metav1.Condition{
		Type:               typ,
		Status:             status,
		ObservedGeneration: generation,
		Reason:             reason,
		Message:            message,
	})
}

// check is one link of a readiness chain: it reports whether something holds, and if not, why.
type check func(conds []metav1.Condition) (reason, message string, ok bool)

// conditionTrue is a check that holds when the condition typ is True. A missing condition does not hold, with
// reason Pending.
func conditionTrue(typ string) check {
	return func(conds []metav1.Condition) (string, string, bool) {
		cond := meta.FindStatusCondition(conds, typ)
		switch {
		case cond == nil:
			return "Pending", typ + " has not been evaluated yet", false
		case cond.Status != metav1.ConditionTrue:
			return cond.Reason, cond.Message, false
		}
		return "", "", true
	}
}

// runChain evaluates checks in order and returns the first failure, or ok when all hold.
func runChain(conds []metav1.Condition, chain ...check) (reason, message string, ok bool) {
	for _, c := range chain {
		if reason, message, ok := c(conds); !ok {
			return reason, message, false
		}
	}
	return "", "", true
}
