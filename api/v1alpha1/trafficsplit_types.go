package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrafficSplitBackend is a Service that receives a share of the root service's traffic.
type TrafficSplitBackend struct {
	// Service is the name of a Service in the split's namespace. Required; may not be the root service.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Service string `json:"service"`

	// Weight is the backend's share relative to the other backends' weights; 0 drains it. Required.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	Weight int32 `json:"weight"`
}

// TrafficSplitSpec divides the traffic addressed to a root Service among backend Services, the shape of SMI
// TrafficSplit v1alpha4 with inline matches.
// +kubebuilder:validation:XValidation:rule="!self.backends.exists(b, b.service == self.service)",message="a backend may not be the root service itself: point the root service's traffic at other Services"
type TrafficSplitSpec struct {
	// Service is the root (apex) Service that clients address. Required.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Service string `json:"service"`

	// Backends receive the traffic in proportion to their weights. Required: at least one, unique services, at
	// least one weight above 0.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.exists(b, b.weight > 0)",message="at least one backend must have a weight above 0; to stop all traffic, delete the TrafficSplit or scale the backends down"
	// +kubebuilder:validation:XValidation:rule="self.all(b, self.filter(c, c.service == b.service).size() == 1)",message="backend services must be unique: merge the weights of duplicate entries"
	Backends []TrafficSplitBackend `json:"backends"`

	// Matches limit the split to matching HTTP requests; the rest go to the root service unchanged.
	// Default: every request is split.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	Matches []HTTPMatch `json:"matches,omitempty"`
}

// TrafficSplitStatus is the observed state of a TrafficSplit.
type TrafficSplitStatus struct {
	// ObservedGeneration is the generation of the spec this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Accepted and ResolvedRefs.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TrafficSplit divides the traffic addressed to a root Service among backend Services by weight.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ts,categories=trellis
// +kubebuilder:printcolumn:name="Service",type=string,JSONPath=`.spec.service`
// +kubebuilder:printcolumn:name="Backends",type=string,JSONPath=`.spec.backends[*].service`
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TrafficSplit struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec is the desired state.
	Spec TrafficSplitSpec `json:"spec"`
	// Status is the observed state, written by the manager.
	// +optional
	Status TrafficSplitStatus `json:"status,omitempty"`
}

// TrafficSplitList is a list of TrafficSplit.
//
// +kubebuilder:object:root=true
type TrafficSplitList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	// Items are the splits.
	Items []TrafficSplit `json:"items"`
}
