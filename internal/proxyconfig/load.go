package proxyconfig

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Document file names accepted by LoadDir. A directory holds either one document named config.json, config.yaml or
// config.yml, or shards named config-<anything>.json|.yaml|.yml (both at once is an error). Names beginning with "."
// (kubelet's "..data" and timestamped directories) are ignored.
const (
	// DocumentBase is the base name of an unsharded document.
	DocumentBase = "config"
	// ShardPrefix starts the name of each shard.
	ShardPrefix = "config-"
)

// Loaded is a decoded, merged, defaulted and validated configuration with its content hash.
type Loaded struct {
	// Config is the merged document with defaults applied.
	Config *Config
	// Hash is the sha256 of the canonical document, as returned by Hash.
	Hash string
	// Files are the document files read, in merge order.
	Files []string
}

// LoadDir reads the documents in dir, merges shards (see Merge), applies defaults and validates the result.
func LoadDir(dir string) (*Loaded, error) {
	files, err := DocumentFiles(dir)
	if err != nil {
		return nil, err
	}
	docs := make([]*Config, 0, len(files))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		c, err := Decode(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(f), err)
		}
		docs = append(docs, c)
	}
	c, err := Merge(docs...)
	if err != nil {
		return nil, err
	}
	l, err := Complete(c)
	if err != nil {
		return nil, err
	}
	l.Files = files
	return l, nil
}

// Complete defaults and validates c and computes its hash.
func Complete(c *Config) (*Loaded, error) {
	SetDefaults(c)
	if errs := Validate(c); len(errs) > 0 {
		return nil, &ValidationError{Errors: errs}
	}
	h, err := Hash(c)
	if err != nil {
		return nil, err
	}
	return &Loaded{Config: c, Hash: h}, nil
}

// ValidationError reports every field of a document that failed validation.
type ValidationError struct {
	// Errors are the failures with their field paths.
	Errors field.ErrorList
}

// Error joins the failures with "; ".
func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		msgs[i] = fe.Error()
	}
	return "invalid configuration: " + strings.Join(msgs, "; ")
}

// DocumentFiles lists the document files of dir in merge order: config.{json,yaml,yml}, or the config-* shards sorted
// by name.
func DocumentFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var single, shards []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		ext := filepath.Ext(name)
		if ext != ".json" && ext != ".yaml" && ext != ".yml" {
			continue
		}
		base := strings.TrimSuffix(name, ext)
		switch {
		case base == DocumentBase:
			single = append(single, filepath.Join(dir, name))
		case strings.HasPrefix(base, ShardPrefix) && len(base) > len(ShardPrefix):
			shards = append(shards, filepath.Join(dir, name))
		}
	}
	switch {
	case len(single) > 1:
		return nil, fmt.Errorf("%s: more than one of config.json, config.yaml, config.yml", dir)
	case len(single) == 1 && len(shards) > 0:
		return nil, fmt.Errorf("%s: holds both %s and %d config-* shards", dir, filepath.Base(single[0]), len(shards))
	case len(single) == 1:
		return single, nil
	case len(shards) == 0:
		return nil, fmt.Errorf("%s: no config.json, config.yaml or config-*.json|yaml shards", dir)
	}
	sort.Strings(shards)
	return shards, nil
}

// Merge combines shards of one configuration: every shard must carry the same apiVersion and version; clusterDomain,
// defaults and inbound.defaultPolicy may each be set by at most one shard (or by several with equal values);
// services, inbound ports and workloads, and opaque ports are concatenated in shard order. A single document is returned as is.
func Merge(shards ...*Config) (*Config, error) {
	if len(shards) == 0 {
		return nil, errors.New("no documents")
	}
	if len(shards) == 1 {
		return shards[0], nil
	}
	out := &Config{APIVersion: shards[0].APIVersion, Version: shards[0].Version}
	for i, s := range shards {
		if s.APIVersion != out.APIVersion || s.Version != out.Version {
			return nil, fmt.Errorf("shard %d has apiVersion %q version %q; shard 0 has %q %q", i, s.APIVersion,
				s.Version, out.APIVersion, out.Version)
		}
		if err := mergeOnce(&out.ClusterDomain, s.ClusterDomain, "clusterDomain", i); err != nil {
			return nil, err
		}
		if s.Defaults != nil {
			if out.Defaults != nil && !sameJSON(out.Defaults, s.Defaults) {
				return nil, fmt.Errorf("shard %d sets defaults, and so does an earlier shard with other values", i)
			}
			out.Defaults = s.Defaults
		}
		out.Services = append(out.Services, s.Services...)
		out.OpaquePorts = append(out.OpaquePorts, s.OpaquePorts...)
		if s.Inbound != nil {
			if out.Inbound == nil {
				out.Inbound = &Inbound{}
			}
			if err := mergeOnce(&out.Inbound.DefaultPolicy, s.Inbound.DefaultPolicy, "inbound.defaultPolicy", i); err != nil {
				return nil, err
			}
			out.Inbound.Ports = append(out.Inbound.Ports, s.Inbound.Ports...)
			out.Inbound.Workloads = append(out.Inbound.Workloads, s.Inbound.Workloads...)
		}
	}
	return out, nil
}

func mergeOnce(dst *string, v, name string, shard int) error {
	if v == "" {
		return nil
	}
	if *dst != "" && *dst != v {
		return fmt.Errorf("shard %d sets %s to %q, an earlier shard to %q", shard, name, v, *dst)
	}
	*dst = v
	return nil
}

func sameJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}

// Canonical returns the canonical encoding of a document: compact JSON of the (defaulted, merged) document with fields
// in schema order. Two documents that decode to the same values have the same canonical form, whatever their format,
// sharding, key order or whitespace.
func Canonical(c *Config) ([]byte, error) { return json.Marshal(c) }

// Hash returns "sha256:<hex>" of Canonical(c). The operator and the proxy compute it the same way, so a proxy's
// /config can be compared with what the operator rendered. Hash the document after SetDefaults.
func Hash(c *Config) (string, error) {
	b, err := Canonical(c)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}
