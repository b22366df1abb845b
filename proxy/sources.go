package proxy

import (
	"context"
	"fmt"
	"sync"

	"github.com/trellis-mesh/trellis/internal/proxyconfig"
	"github.com/trellis-mesh/trellis/proxy/apiconfig"
	"github.com/trellis-mesh/trellis/proxy/reload"
	"github.com/trellis-mesh/trellis/proxy/snapshot"
)

// Configuration sources, the values of RunOptions.ConfigSource (--config-source).
const (
	// ConfigSourceAuto watches the ConfigMaps through the API when the pod has a ServiceAccount token and the API
	// server's address, with the mounted volume as the fallback; the volume alone otherwise.
	ConfigSourceAuto = "auto"
	// ConfigSourceAPI is ConfigSourceAuto, but the proxy does not start without what the API watch needs.
	ConfigSourceAPI = "api"
	// ConfigSourceVolume reads the mounted volume only.
	ConfigSourceVolume = "volume"
)

// DefaultPodLabelsFile is where the injector mounts the downward API file of the pod's labels.
const DefaultPodLabelsFile = "/var/run/trellis/podinfo/labels"

// configSources are the configuration pipeline and what feeds it.
type configSources struct {
	pipeline *reload.Pipeline
	volume   *reload.Watcher
	labels   *reload.LabelWatcher
	api      *apiconfig.Source // nil: the volume only
}

// newConfigSources builds the pipeline into store, compiling with base plus the pod's namespace, labels and trust
// domain; the volume and label watchers; and, as o.ConfigSource says, the API source. It reads the pod's labels
// once, so the first compilation sees them.
func (o *RunOptions) newConfigSources(store *snapshot.Store, base snapshot.Options) (*configSources, error) {
	cs := &configSources{}
	cs.labels = &reload.LabelWatcher{File: or(o.PodLabelsFile, DefaultPodLabelsFile), Interval: o.PollInterval,
		Log: o.Log}
	cs.pipeline = &reload.Pipeline{Store: store, Metrics: base.Metrics, Log: o.Log,
		Compile: func(l *proxyconfig.Loaded) (*snapshot.Snapshot, error) {
			so := base
			so.PodNamespace, so.PodLabels = o.PodNamespace, cs.labels.Labels()
			so.TrustDomain = or(o.TrustDomain, DefaultTrustDomain)
			s, err := snapshot.Compile(l, so)
			if err == nil && o.DetectTimeout > 0 {
				s.DetectTimeout = o.DetectTimeout
			}
			return s, err
		}}
	cs.labels.Pipeline = cs.pipeline
	cs.volume = &reload.Watcher{Dir: o.ConfigDir, Interval: o.PollInterval, Pipeline: cs.pipeline}
	_, _ = cs.labels.Load() // a missing file is logged: no labels

	source := or(o.ConfigSource, ConfigSourceAuto)
	switch source {
	case ConfigSourceVolume:
		return cs, nil
	case ConfigSourceAuto, ConfigSourceAPI:
	default:
		return nil, fmt.Errorf("--config-source %q: want auto, api or volume", source)
	}
	host := o.APIServer
	if host == "" {
		host = apiconfig.HostFromEnv()
	}
	token, ca := or(o.APITokenFile, apiconfig.DefaultTokenFile), or(o.APICAFile, apiconfig.DefaultCAFile)
	err := apiconfig.Available(host, token, ca)
	if err == nil && o.PodNamespace == "" {
		err = fmt.Errorf("the pod's namespace is unknown (--pod-namespace)")
	}
	if err == nil {
		cs.api, err = apiconfig.New(apiconfig.Options{Host: host, TokenFile: token, CAFile: ca,
			Namespace: o.PodNamespace, Pipeline: cs.pipeline, Log: o.Log})
	}
	switch {
	case err != nil && source == ConfigSourceAPI:
		return nil, fmt.Errorf("--config-source api: %w", err)
	case err != nil:
		o.Log.Info("Reading the configuration from the mounted volume only", "dir", o.ConfigDir, "reason", err)
	default:
		o.Log.Info("Watching the configuration through the API, with the mounted volume as the fallback",
			"apiServer", host, "namespace", o.PodNamespace, "dir", o.ConfigDir)
	}
	return cs, nil
}

// run polls the volume and the labels and runs the API watch until ctx ends; wait returns once they stopped.
func (cs *configSources) run(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() { cs.volume.Run(ctx) })
	wg.Go(func() { cs.labels.Run(ctx) })
	if cs.api != nil {
		wg.Go(func() { cs.api.Run(ctx) })
	}
	return wg.Wait
}
