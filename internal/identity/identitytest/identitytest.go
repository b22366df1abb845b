// Package identitytest builds certificate authorities, workload certificates and issuer Secrets for tests of the
// identity packages and of their users (the proxy, the manager). It is for tests only.
package identitytest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// CA is a certificate authority: a self-signed trust anchor or an intermediate signed by its Parent.
type CA struct {
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// Key is the CA's private key.
	Key crypto.Signer
	// Parent is the CA that signed Cert; nil for a trust anchor.
	Parent *CA
}

// NewRoot returns a self-signed ECDSA P-256 trust anchor valid from one hour ago for a year.
func NewRoot(tb testing.TB, name string) *CA {
	tb.Helper()
	now := time.Now()
	return NewRootValid(tb, name, now.Add(-time.Hour), now.Add(365*24*time.Hour))
}

// NewRootValid returns a self-signed ECDSA P-256 trust anchor valid from notBefore to notAfter.
func NewRootValid(tb testing.TB, name string, notBefore, notAfter time.Time) *CA {
	tb.Helper()
	key := NewKey(tb)
	tmpl := caTemplate(name, notBefore, notAfter)
	tmpl.SerialNumber = serial(tb)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	return &CA{Cert: mustParse(tb, der), Key: key}
}

// NewIntermediate returns a CA signed by ca, valid from one hour ago for 48 hours (like the identity issuer).
func (ca *CA) NewIntermediate(tb testing.TB, name string) *CA {
	tb.Helper()
	now := time.Now()
	return ca.NewIntermediateValid(tb, name, now.Add(-time.Hour), now.Add(48*time.Hour))
}

// NewIntermediateValid returns a CA signed by ca, valid from notBefore to notAfter.
func (ca *CA) NewIntermediateValid(tb testing.TB, name string, notBefore, notAfter time.Time) *CA {
	tb.Helper()
	key := NewKey(tb)
	tmpl := caTemplate(name, notBefore, notAfter)
	tmpl.SerialNumber = serial(tb)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		tb.Fatal(err)
	}
	return &CA{Cert: mustParse(tb, der), Key: key, Parent: ca}
}

// Chain returns ca's certificate followed by its parents', without the trust anchor.
func (ca *CA) Chain() []*x509.Certificate {
	var out []*x509.Certificate
	for c := ca; c != nil && c.Parent != nil; c = c.Parent {
		out = append(out, c.Cert)
	}
	return out
}

// Root returns the trust anchor at the top of ca's chain.
func (ca *CA) Root() *CA {
	c := ca
	for c.Parent != nil {
		c = c.Parent
	}
	return c
}

// SVID issues a workload certificate for id with a new P-256 key, valid from one minute ago for one hour, usable for
// client and server authentication. The returned chain holds the leaf and ca.Chain().
func (ca *CA) SVID(tb testing.TB, id spiffe.ID) *tls.Certificate {
	tb.Helper()
	now := time.Now()
	return ca.SVIDValid(tb, now.Add(-time.Minute), now.Add(time.Hour), id.URL())
}

// SVIDValid issues a workload certificate with the given validity and URI SANs (any number, for negative tests).
func (ca *CA) SVIDValid(tb testing.TB, notBefore, notAfter time.Time, uris ...*url.URL) *tls.Certificate {
	tb.Helper()
	return ca.Issue(tb, &x509.Certificate{
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		URIs:                  uris,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	})
}

// ServingCert issues a TLS server certificate for the DNS names given, valid from one minute ago for 30 days.
func (ca *CA) ServingCert(tb testing.TB, dnsNames ...string) *tls.Certificate {
	tb.Helper()
	now := time.Now()
	return ca.Issue(tb, &x509.Certificate{
		Subject:               pkix.Name{CommonName: dnsNames[0]},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		DNSNames:              dnsNames,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	})
}

// Issue signs tmpl (serial number filled in) for a new P-256 key and returns the chain with the key.
func (ca *CA) Issue(tb testing.TB, tmpl *x509.Certificate) *tls.Certificate {
	tb.Helper()
	key := NewKey(tb)
	tmpl.SerialNumber = serial(tb)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		tb.Fatal(err)
	}
	leaf := mustParse(tb, der)
	chain := [][]byte{der}
	for _, c := range ca.Chain() {
		chain = append(chain, c.Raw)
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}
}

// IssuerSecretData returns the data of a kubernetes.io/tls Secret holding ca as the identity issuer, laid out the
// way cert-manager writes it: tls.crt (ca's chain), tls.key (PKCS#8) and ca.crt (the trust anchor).
func (ca *CA) IssuerSecretData(tb testing.TB) map[string][]byte {
	tb.Helper()
	chain := ca.Chain()
	if len(chain) == 0 { // a self-signed issuer
		chain = []*x509.Certificate{ca.Cert}
	}
	return map[string][]byte{
		"tls.crt": PEMCerts(chain...),
		"tls.key": PEMKey(tb, ca.Key),
		"ca.crt":  PEMCerts(ca.Root().Cert),
	}
}

// TLSSecretData returns the data of a kubernetes.io/tls Secret holding cert, with ca.crt set to root.
func TLSSecretData(tb testing.TB, cert *tls.Certificate, root *x509.Certificate) map[string][]byte {
	tb.Helper()
	var crt []byte
	for _, der := range cert.Certificate {
		crt = append(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return map[string][]byte{
		"tls.crt": crt,
		"tls.key": PEMKey(tb, cert.PrivateKey.(crypto.Signer)),
		"ca.crt":  PEMCerts(root),
	}
}

// NewKey returns a new ECDSA P-256 key.
func NewKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

// PEMCerts encodes certificates as concatenated PEM "CERTIFICATE" blocks.
func PEMCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// PEMKey encodes a private key as a PEM "PRIVATE KEY" (PKCS#8) block.
func PEMKey(tb testing.TB, key crypto.Signer) []byte {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// Pool returns a pool holding the given certificates.
func Pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

func caTemplate(name string, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
}

func serial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

func mustParse(tb testing.TB, der []byte) *x509.Certificate {
	tb.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Value returns the value of a collector holding exactly one counter or gauge, e.g. vec.WithLabelValues(...). It
// fails the test otherwise.
func Value(tb testing.TB, c prometheus.Collector) float64 {
	tb.Helper()
	ch := make(chan prometheus.Metric, 2)
	c.Collect(ch)
	close(ch)
	var out []float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			tb.Fatal(err)
		}
		switch {
		case d.Counter != nil:
			out = append(out, d.Counter.GetValue())
		case d.Gauge != nil:
			out = append(out, d.Gauge.GetValue())
		}
	}
	if len(out) != 1 {
		tb.Fatalf("collector holds %d counters or gauges, want 1", len(out))
	}
	return out[0]
}

// Families returns the names of the metric families a registry gathers.
func Families(tb testing.TB, g prometheus.Gatherer) map[string]bool {
	tb.Helper()
	mfs, err := g.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]bool{}
	for _, mf := range mfs {
		out[mf.GetName()] = true
	}
	return out
}
