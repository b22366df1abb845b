package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/trellis-mesh/trellis/internal/wellknown"
)

// AnnotationError is a pod annotation whose value cannot be used.
type AnnotationError struct {
	// Annotation is the annotation's key.
	Annotation string
	// Value is its value as written.
	Value string
	// Reason says what is wrong with it.
	Reason string
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s: %q: %s", e.Annotation, e.Value, e.Reason)
}

// logLevels are the proxy's log levels.
var logLevels = map[string]bool{"debug": true, "info": true, "warn": true, "error": true}

// applyOverrides returns p with the pod's config.trellis.io/* annotations applied; each replaces the setting it
// names. p's resources are copied, never shared with the result.
func applyOverrides(annotations map[string]string, p Params) (Params, error) {
	for _, o := range []struct {
		key string
		dst *Ports
	}{
		{wellknown.AnnotationSkipInboundPorts, &p.SkipInboundPorts},
		{wellknown.AnnotationSkipOutboundPorts, &p.SkipOutboundPorts},
		{wellknown.AnnotationOpaquePorts, &p.OpaquePorts},
	} {
		v, ok := annotations[o.key]
		if !ok {
			continue
		}
		ports, err := ParsePorts(v)
		if err != nil {
			return p, &AnnotationError{Annotation: o.key, Value: v, Reason: "want comma-separated ports and ranges such as 25,8000-8100: " + err.Error()}
		}
		*o.dst = ports
	}
	if v, ok := annotations[wellknown.AnnotationLogLevel]; ok {
		if !logLevels[v] {
			return p, &AnnotationError{Annotation: wellknown.AnnotationLogLevel, Value: v, Reason: "want debug, info, warn or error"}
		}
		p.LogLevel = v
	}
	p.Resources = *p.Resources.DeepCopy()
	return p, overrideResources(annotations, &p.Resources)
}

// overrideResources applies the proxy resource annotations and checks that no request exceeds its limit.
func overrideResources(annotations map[string]string, r *corev1.ResourceRequirements) error {
	type override struct {
		key   string
		limit bool
		name  corev1.ResourceName
	}
	overrides := []override{
		{wellknown.AnnotationProxyCPURequest, false, corev1.ResourceCPU},
		{wellknown.AnnotationProxyMemoryRequest, false, corev1.ResourceMemory},
		{wellknown.AnnotationProxyCPULimit, true, corev1.ResourceCPU},
		{wellknown.AnnotationProxyMemoryLimit, true, corev1.ResourceMemory},
	}
	for _, o := range overrides {
		v, ok := annotations[o.key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(strings.TrimSpace(v))
		if err != nil {
			return &AnnotationError{Annotation: o.key, Value: v, Reason: "not a quantity such as 100m or 64Mi"}
		}
		if q.Sign() <= 0 {
			return &AnnotationError{Annotation: o.key, Value: v, Reason: "must be above 0"}
		}
		list := &r.Requests
		if o.limit {
			list = &r.Limits
		}
		if *list == nil {
			*list = corev1.ResourceList{}
		}
		(*list)[o.name] = q
	}
	for _, o := range overrides[2:] {
		limit, hasLimit := r.Limits[o.name]
		request, hasRequest := r.Requests[o.name]
		if hasLimit && hasRequest && request.Cmp(limit) > 0 {
			requestKey := wellknown.AnnotationProxyCPURequest
			if o.name == corev1.ResourceMemory {
				requestKey = wellknown.AnnotationProxyMemoryRequest
			}
			return fmt.Errorf("the proxy's %s request %s is above its limit %s: set %s and %s so that the request "+
				"is at most the limit", o.name, request.String(), limit.String(), requestKey, o.key)
		}
	}
	return nil
}
