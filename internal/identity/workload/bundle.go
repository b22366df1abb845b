package workload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// ParseTrustBundle parses a PEM trust bundle: one or more "CERTIFICATE" blocks, each a CA certificate. Other block
// types are refused, so that a truncated or wrong file is never half-loaded.
func ParseTrustBundle(p []byte) (*x509.CertPool, int, error) {
	pool := x509.NewCertPool()
	n := 0
	rest := p
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, 0, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, 0, err
		}
		if !c.IsCA {
			return nil, 0, fmt.Errorf("certificate %q is not a CA", c.Subject)
		}
		pool.AddCert(c)
		n++
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, 0, errors.New("trailing data after the last certificate")
	}
	if n == 0 {
		return nil, 0, errors.New("no certificate")
	}
	return pool, n, nil
}

// errBundleUnchanged is returned for a bundle whose invalid content was already reported.
var errBundleUnchanged = errors.New("trust bundle still invalid")

// loadBundle reads TrustBundleFile and, when its content changed and parses, installs the new roots. A bad bundle
// leaves the last good roots in place.
func (m *Manager) loadBundle() error {
	m.bundleMu.Lock()
	defer m.bundleMu.Unlock()
	p, err := os.ReadFile(m.opts.TrustBundleFile)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(p)
	if m.roots.Load() != nil && bytes.Equal(sum[:], m.bundleDigest) {
		return nil
	}
	if bytes.Equal(sum[:], m.badDigest) {
		return errBundleUnchanged // already counted and reported
	}
	pool, n, err := ParseTrustBundle(p)
	if err != nil {
		m.badDigest = sum[:]
		m.bundleLoad.WithLabelValues("invalid").Inc()
		return err
	}
	first := m.roots.Load() == nil
	m.roots.Store(pool)
	m.bundleDigest = sum[:]
	m.bundleLoad.WithLabelValues("loaded").Inc()
	if first {
		m.log.Info("Loaded trust bundle", "file", m.opts.TrustBundleFile, "anchors", n)
	} else {
		m.log.Info("Reloaded changed trust bundle", "file", m.opts.TrustBundleFile, "anchors", n)
	}
	return nil
}

// pollBundle reloads the trust bundle every BundlePollInterval until ctx ends. Reading the file by its path follows
// the kubelet's ..data symlink, so an atomic ConfigMap update is seen whole.
func (m *Manager) pollBundle(ctx context.Context) {
	for {
		t := m.opts.Clock.NewTimer(m.opts.BundlePollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		if err := m.loadBundle(); err != nil && !errors.Is(err, errBundleUnchanged) {
			m.log.Error(err, "Cannot load trust bundle; keeping the last good one", "file", m.opts.TrustBundleFile)
		}
	}
}
