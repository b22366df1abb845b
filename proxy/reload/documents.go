package reload

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
)

// Document is one configuration file held outside a directory: a key of a ConfigMap read through the API.
type Document struct {
	// Origin is where the document comes from, for /config and logs (the ConfigMap's name).
	Origin string
	// Name is the file name (the ConfigMap key), which says whether it is a document or a shard.
	Name string
	// Data is the content.
	Data []byte
}

// LoadDocuments is proxyconfig.LoadDir for documents gathered from several places (the ConfigMaps of a
// configuration, read through the API), with the same file-name rules: one config.{json,yaml,yml} or config-*
// shards merged in name order, never both; other names and names starting with "." are ignored; two documents of
// the same name are an error. Loaded.Files lists "<origin>/<name>".
func LoadDocuments(docs []Document) (*proxyconfig.Loaded, error) {
	byName := map[string]Document{}
	for _, d := range docs {
		if prev, ok := byName[d.Name]; ok {
			return nil, fmt.Errorf("%s/%s and %s/%s: the same file name twice", prev.Origin, prev.Name, d.Origin, d.Name)
		}
		byName[d.Name] = d
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	selected, err := selectDocuments(names)
	if err != nil {
		return nil, err
	}
	configs := make([]*proxyconfig.Config, 0, len(selected))
	files := make([]string, 0, len(selected))
	for _, n := range selected {
		d := byName[n]
		c, err := proxyconfig.Decode(d.Data)
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", d.Origin, d.Name, err)
		}
		configs = append(configs, c)
		files = append(files, d.Origin+"/"+d.Name)
	}
	c, err := proxyconfig.Merge(configs...)
	if err != nil {
		return nil, err
	}
	l, err := proxyconfig.Complete(c)
	if err != nil {
		return nil, err
	}
	l.Files = files
	return l, nil
}

// selectDocuments applies proxyconfig.DocumentFiles' rules to file names and returns the documents in merge order.
func selectDocuments(names []string) ([]string, error) {
	var single, shards []string
	for _, name := range names {
		if strings.HasPrefix(name, ".") {
			continue
		}
		ext := path.Ext(name)
		if ext != ".json" && ext != ".yaml" && ext != ".yml" {
			continue
		}
		base := strings.TrimSuffix(name, ext)
		switch {
		case base == proxyconfig.DocumentBase:
			single = append(single, name)
		case strings.HasPrefix(base, proxyconfig.ShardPrefix) && len(base) > len(proxyconfig.ShardPrefix):
			shards = append(shards, name)
		}
	}
	sort.Strings(single)
	switch {
	case len(single) > 1:
		return nil, errors.New("more than one of config.json, config.yaml, config.yml")
	case len(single) == 1 && len(shards) > 0:
		return nil, fmt.Errorf("both %s and %d config-* shards", single[0], len(shards))
	case len(single) == 1:
		return single, nil
	case len(shards) == 0:
		return nil, errors.New("no config.json, config.yaml or config-*.json|yaml shards")
	}
	sort.Strings(shards)
	return shards, nil
}
