package proxyconfig

import (
	"bytes"
	"errors"
	"fmt"

	"sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// MaxDocumentSize bounds one encoded document (or shard); a ConfigMap holds at most 1 MiB of data.
const MaxDocumentSize = 1 << 20

// Decode parses one document strictly: unknown fields, duplicate fields, case-mismatched field names and trailing data
// are errors. JSON is recognised by a leading '{'; anything else is read as YAML. Decode does not default or validate.
func Decode(data []byte) (*Config, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("document is %d bytes, more than the %d allowed", len(data), MaxDocumentSize)
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return nil, errors.New("document is empty")
	}
	js := trimmed
	if trimmed[0] != '{' {
		var err error
		if js, err = yaml.YAMLToJSONStrict(trimmed); err != nil {
			return nil, fmt.Errorf("decoding YAML: %w", err)
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			return nil, errors.New("document is empty")
		}
	}
	c := &Config{}
	strict, err := json.UnmarshalStrict(js, c, json.DisallowDuplicateFields, json.DisallowUnknownFields)
	if err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("decoding: %w", errors.Join(strict...))
	}
	return c, nil
}
