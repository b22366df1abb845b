package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"net/url"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// Key policy for CSRs. ECDSA keys must use P-256 (what the proxy generates) or P-384; RSA keys must have a modulus of
// MinRSABits to MaxRSABits bits and the exponent 65537. Everything else (smaller RSA keys, other curves, Ed25519,
// DSA) is refused with ReasonWeakKey: the mesh only needs what TLS 1.3 peers everywhere support, and a narrow list is
// easier to audit.
const (
	// MinRSABits is the smallest RSA modulus accepted.
	MinRSABits = 2048
	// MaxRSABits is the largest RSA modulus accepted (larger keys only cost CPU on every handshake).
	MaxRSABits = 8192
)

const pemCSR = "CERTIFICATE REQUEST"

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// tagURI is the context-specific tag of uniformResourceIdentifier in GeneralName (RFC 5280, 4.2.1.6).
const tagURI = 6

// ParseCSR decodes and checks a certificate signing request and returns it with the SPIFFE ID it asks for. The
// checks, in order, each with the Reason of its *Error:
//   - exactly one PEM "CERTIFICATE REQUEST" block without headers or trailing data, holding a PKCS#10 request
//     (ReasonMalformedCSR);
//   - a public key allowed by CheckPublicKey (ReasonWeakKey);
//   - a signature that verifies with that key (ReasonBadCSRSignature);
//   - one subjectAltName extension holding exactly one name, a URI (ReasonMissingSAN, ReasonExtraSAN);
//   - that URI is a valid SPIFFE ID (ReasonInvalidSPIFFEID).
//
// The subject and every other requested extension are ignored: the identity service decides them.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, spiffe.ID, error) {
	block, rest := pem.Decode(csrPEM)
	if block == nil || block.Type != pemCSR {
		return nil, spiffe.ID{}, Errorf(ReasonMalformedCSR, "csr is not a PEM %q block", pemCSR)
	}
	if len(block.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0 {
		return nil, spiffe.ID{}, Errorf(ReasonMalformedCSR, "csr must be exactly one PEM block without headers")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, spiffe.ID{}, Errorf(ReasonMalformedCSR, "csr does not parse: %v", err)
	}
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		return nil, spiffe.ID{}, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, spiffe.ID{}, Errorf(ReasonBadCSRSignature, "csr signature does not verify: %v", err)
	}
	id, err := requestedID(csr)
	if err != nil {
		return nil, spiffe.ID{}, err
	}
	return csr, id, nil
}

// requestedID checks the SAN extension by hand, because crypto/x509 silently drops name types it does not model
// (otherName, directoryName, registeredID, ...), and a CSR asking for those must be refused too.
func requestedID(csr *x509.CertificateRequest) (spiffe.ID, error) {
	var san []byte
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		if san != nil {
			return spiffe.ID{}, Errorf(ReasonExtraSAN, "csr has more than one subjectAltName extension")
		}
		san = ext.Value
	}
	if san == nil {
		return spiffe.ID{}, Errorf(ReasonMissingSAN, "csr has no subjectAltName; it must ask for one SPIFFE ID URI")
	}
	var seq asn1.RawValue
	if rest, err := asn1.Unmarshal(san, &seq); err != nil || len(rest) != 0 || !seq.IsCompound || seq.Tag != asn1.TagSequence {
		return spiffe.ID{}, Errorf(ReasonMalformedCSR, "csr subjectAltName is not a sequence of names")
	}
	var uris, others int
	var uri string
	for rest := seq.Bytes; len(rest) > 0; {
		var name asn1.RawValue
		var err error
		if rest, err = asn1.Unmarshal(rest, &name); err != nil {
			return spiffe.ID{}, Errorf(ReasonMalformedCSR, "csr subjectAltName does not parse: %v", err)
		}
		if name.Class == asn1.ClassContextSpecific && name.Tag == tagURI && !name.IsCompound {
			uris++
			uri = string(name.Bytes)
			continue
		}
		others++
	}
	switch {
	case others > 0:
		return spiffe.ID{}, Errorf(ReasonExtraSAN, "csr asks for %d subjectAltName(s) that are not URIs (DNS, IP, e-mail, ...); only one SPIFFE ID URI is allowed", others)
	case uris == 0:
		return spiffe.ID{}, Errorf(ReasonMissingSAN, "csr has no URI subjectAltName; it must ask for one SPIFFE ID")
	case uris > 1:
		return spiffe.ID{}, Errorf(ReasonExtraSAN, "csr asks for %d URIs; only one SPIFFE ID is allowed", uris)
	}
	id, err := spiffe.Parse(uri)
	if err != nil {
		return spiffe.ID{}, Errorf(ReasonInvalidSPIFFEID, "csr URI %q: %v", truncate(uri, 256), err)
	}
	return id, nil
}

// CheckPublicKey enforces the key policy documented on MinRSABits; a refusal is an *Error with ReasonWeakKey.
func CheckPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return Errorf(ReasonWeakKey, "ECDSA curve %s is not allowed; use P-256 or P-384", k.Curve.Params().Name)
		}
		return nil
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < MinRSABits || bits > MaxRSABits {
			return Errorf(ReasonWeakKey, "RSA key of %d bits is not allowed; use %d to %d bits", bits, MinRSABits, MaxRSABits)
		}
		if k.E != 65537 {
			return Errorf(ReasonWeakKey, "RSA public exponent %d is not allowed; use 65537", k.E)
		}
		return nil
	default:
		return Errorf(ReasonWeakKey, "public key type %T is not allowed; use ECDSA P-256 or P-384, or RSA", pub)
	}
}

// NewCSR returns a PEM CSR asking for id, signed by key, in the form ParseCSR accepts: no subject, one URI SAN.
func NewCSR(key crypto.Signer, id spiffe.ID) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: der}), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
