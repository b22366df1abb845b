package inject

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/strategicpatch"
)

// ApplyChange replays on original (JSON) the change that turned before into after (JSON of the typed object, as
// InjectPodSpec mutated it), as a strategic merge patch of dataStruct's type (corev1.Pod{} or
// corev1.PodTemplateSpec{}). Fields that this build's API types do not know are in original but not in before
// and after; they survive, where re-encoding the typed object would drop them.
func ApplyChange(original, before, after []byte, dataStruct any) ([]byte, error) {
	patch, err := strategicpatch.CreateTwoWayMergePatch(before, after, dataStruct)
	if err != nil {
		return nil, fmt.Errorf("computing the injection patch: %w", err)
	}
	merged, err := strategicpatch.StrategicMergePatch(original, patch, dataStruct)
	if err != nil {
		return nil, fmt.Errorf("applying the injection patch: %w", err)
	}
	return merged, nil
}
