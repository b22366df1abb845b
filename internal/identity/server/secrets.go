package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/trellis-mesh/trellis/internal/identity"
)

// Event reasons recorded on the watched Secrets (action "Load").
const (
	// EventIssuerLoaded: the issuer Secret was loaded for the first time.
	EventIssuerLoaded = "IssuerLoaded"
	// EventIssuerRotated: a new issuer certificate or key replaced the previous one.
	EventIssuerRotated = "IssuerRotated"
	// EventIssuerInvalid (Warning): the issuer Secret does not load; the last good issuer stays in use.
	EventIssuerInvalid = "IssuerInvalid"
	// EventIssuerDeleted (Warning): the issuer Secret was deleted; the last good issuer stays in use.
	EventIssuerDeleted = "IssuerDeleted"
	// EventServingCertLoaded: the serving certificate Secret was loaded for the first time.
	EventServingCertLoaded = "ServingCertificateLoaded"
	// EventServingCertRotated: a new serving certificate replaced the previous one.
	EventServingCertRotated = "ServingCertificateRotated"
	// EventServingCertInvalid (Warning): the serving Secret does not load; the last good one stays in use.
	EventServingCertInvalid = "ServingCertificateInvalid"
	// EventServingCertDeleted (Warning): the serving Secret was deleted; the last good one stays in use.
	EventServingCertDeleted = "ServingCertificateDeleted"
)

const (
	eventActionLoad     = "Load"
	maxIssuerChainDepth = 8
	secretKeyCert       = corev1.TLSCertKey
	secretKeyKey        = corev1.TLSPrivateKeyKey
	secretKeyCA         = "ca.crt"
)

// issuer is a loaded identity issuer: the CA certificate and key that sign leaves, and the chain sent after a leaf.
type issuer struct {
	cert   *x509.Certificate
	key    crypto.Signer
	chain  []byte // PEM: cert, then the intermediates of tls.crt; self-signed certificates left out
	digest [32]byte
}

// servingCert is a loaded serving certificate.
type servingCert struct {
	cert   *tls.Certificate
	digest [32]byte
}

// parseIssuer loads an identity issuer from a kubernetes.io/tls Secret's data. tls.crt holds the CA certificate
// first, then optional intermediates; tls.key its key (PKCS#1, SEC 1 or PKCS#8 PEM). The certificate must be a CA
// allowed to sign certificates, with a key the CSR key policy allows. When ca.crt is present, the certificate must
// chain to one of its certificates by signature (validity periods are checked per request, not here, so that an
// expired or not-yet-valid issuer is reported as such).
func parseIssuer(data map[string][]byte) (*issuer, error) {
	pair, err := tls.X509KeyPair(data[secretKeyCert], data[secretKeyKey])
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", secretKeyCert, secretKeyKey, err)
	}
	cert := pair.Leaf
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: key type %T cannot sign", secretKeyKey, pair.PrivateKey)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, errors.New("issuer certificate is not a CA")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("issuer certificate may not sign certificates (no keyCertSign usage)")
	}
	if err := identity.CheckPublicKey(cert.PublicKey); err != nil {
		return nil, fmt.Errorf("issuer key: %w", err)
	}
	var intermediates []*x509.Certificate
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	for _, der := range pair.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", secretKeyCert, err)
		}
		intermediates = append(intermediates, c)
		if !selfSigned(c) {
			chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
	}
	if ca := data[secretKeyCA]; len(bytes.TrimSpace(ca)) > 0 {
		anchors, err := parseCerts(ca)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", secretKeyCA, err)
		}
		if !chainsTo(cert, intermediates, anchors) {
			return nil, fmt.Errorf("issuer certificate does not chain to %s", secretKeyCA)
		}
	}
	return &issuer{cert: cert, key: key, chain: chain, digest: digest(data[secretKeyCert], data[secretKeyKey])}, nil
}

// parseServing loads a serving certificate from a kubernetes.io/tls Secret's data.
func parseServing(data map[string][]byte) (*servingCert, error) {
	pair, err := tls.X509KeyPair(data[secretKeyCert], data[secretKeyKey])
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", secretKeyCert, secretKeyKey, err)
	}
	return &servingCert{cert: &pair, digest: digest(data[secretKeyCert], data[secretKeyKey])}, nil
}

func parseCerts(p []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, p = pem.Decode(p)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate")
	}
	return out, nil
}

// chainsTo reports whether cert chains, through intermediates, to one of anchors by signature alone.
func chainsTo(cert *x509.Certificate, intermediates, anchors []*x509.Certificate) bool {
	cur := cert
	for range maxIssuerChainDepth {
		for _, a := range anchors {
			if cur.Equal(a) || bytes.Equal(cur.RawIssuer, a.RawSubject) && cur.CheckSignatureFrom(a) == nil {
				return true
			}
		}
		var next *x509.Certificate
		for _, c := range intermediates {
			if c != cur && bytes.Equal(cur.RawIssuer, c.RawSubject) && cur.CheckSignatureFrom(c) == nil {
				next = c
				break
			}
		}
		if next == nil {
			return false
		}
		cur = next
	}
	return false
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func digest(parts ...[]byte) [32]byte {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:", len(p))
		h.Write(p)
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// secretHandler reacts to the states of one watched Secret. Its methods are called from one goroutine.
type secretHandler struct {
	kind    string // metric label: "issuer" or "serving"
	load    func(*corev1.Secret) (changed bool, first bool, detail string, err error)
	loaded  string // event reasons
	rotated string
	invalid string
	deleted string
}

func (s *Server) issuerHandler() secretHandler {
	return secretHandler{
		kind: "issuer", loaded: EventIssuerLoaded, rotated: EventIssuerRotated,
		invalid: EventIssuerInvalid, deleted: EventIssuerDeleted,
		load: func(sec *corev1.Secret) (bool, bool, string, error) {
			next, err := parseIssuer(sec.Data)
			if err != nil {
				return false, false, "", err
			}
			prev := s.issuer.Load()
			if prev != nil && prev.digest == next.digest {
				return false, false, "", nil
			}
			s.issuer.Store(next)
			s.metrics.issuerExpiry.Set(float64(next.cert.NotAfter.Unix()))
			return true, prev == nil, describe(next.cert), nil
		},
	}
}

func (s *Server) servingHandler() secretHandler {
	return secretHandler{
		kind: "serving", loaded: EventServingCertLoaded, rotated: EventServingCertRotated,
		invalid: EventServingCertInvalid, deleted: EventServingCertDeleted,
		load: func(sec *corev1.Secret) (bool, bool, string, error) {
			next, err := parseServing(sec.Data)
			if err != nil {
				return false, false, "", err
			}
			prev := s.serving.Load()
			if prev != nil && prev.digest == next.digest {
				return false, false, "", nil
			}
			s.serving.Store(next)
			s.metrics.servingExpiry.Set(float64(next.cert.Leaf.NotAfter.Unix()))
			return true, prev == nil, describe(next.cert.Leaf), nil
		},
	}
}

func describe(c *x509.Certificate) string {
	return fmt.Sprintf("subject %q, serial %x, valid %s to %s", c.Subject.String(), c.SerialNumber,
		c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
}

// watchSecret watches one Secret by name until ctx ends and applies every version of it with h. A Secret that fails
// to load, or is deleted, leaves the last good one in use.
func (s *Server) watchSecret(ctx context.Context, ref types.NamespacedName, h secretHandler) {
	log := s.log.WithValues("secret", ref.String(), "kind", h.kind)
	byName := fields.OneTermEqualSelector("metadata.name", ref.Name).String()
	secrets := s.opts.Client.CoreV1().Secrets(ref.Namespace)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = byName
			return secrets.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = byName
			return secrets.Watch(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &corev1.Secret{}, 0, cache.Indexers{})
	apply := func(obj any) {
		sec, ok := obj.(*corev1.Secret)
		if !ok {
			return
		}
		changed, first, detail, err := h.load(sec)
		switch {
		case err != nil:
			s.metrics.secretLoad.WithLabelValues(h.kind, "invalid").Inc()
			log.Error(err, "Secret is invalid; keeping the last good one", "resourceVersion", sec.ResourceVersion)
			s.event(sec, corev1.EventTypeWarning, h.invalid, "Secret is invalid, the last good version stays in use: %v", err)
		case !changed:
		case first:
			s.metrics.secretLoad.WithLabelValues(h.kind, "loaded").Inc()
			log.Info("Loaded Secret", "resourceVersion", sec.ResourceVersion, "certificate", detail)
			s.event(sec, corev1.EventTypeNormal, h.loaded, "Loaded certificate: %s", detail)
		default:
			s.metrics.secretLoad.WithLabelValues(h.kind, "loaded").Inc()
			log.Info("Reloaded rotated Secret", "resourceVersion", sec.ResourceVersion, "certificate", detail)
			s.event(sec, corev1.EventTypeNormal, h.rotated, "Rotated to certificate: %s", detail)
		}
	}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    apply,
		UpdateFunc: func(_, obj any) { apply(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			s.metrics.secretLoad.WithLabelValues(h.kind, "deleted").Inc()
			log.Info("Secret deleted; keeping the last loaded certificate until it is recreated")
			if sec, ok := obj.(*corev1.Secret); ok {
				s.event(sec, corev1.EventTypeWarning, h.deleted, "Secret deleted, the last loaded certificate stays in use until it is recreated")
			}
		},
	})
	if err != nil {
		log.Error(err, "Cannot watch Secret")
		return
	}
	inf.RunWithContext(ctx)
}

func (s *Server) event(obj runtime.Object, eventType, reason, note string, args ...any) {
	if s.opts.Recorder == nil {
		return
	}
	s.opts.Recorder.Eventf(obj, nil, eventType, reason, eventActionLoad, note, args...)
}
