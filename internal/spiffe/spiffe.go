// Package spiffe parses, validates and formats SPIFFE IDs, and maps Kubernetes ServiceAccounts to the workload
// identities Trellis issues: spiffe://<trustDomain>/ns/<namespace>/sa/<serviceaccount>.
//
// Parsing is strict: only the canonical form defined by the SPIFFE ID specification is accepted (lowercase scheme and
// trust domain, no port, user info, query, fragment, percent-encoding, empty, "." or ".." path segments; at most 2048
// bytes). Because of that, Parse(s).String() == s for every accepted s, and two IDs are equal exactly when their
// strings are equal, so ID values can be compared with ==.
package spiffe

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Scheme is the URI scheme of every SPIFFE ID.
const Scheme = "spiffe"

// MaxLength is the maximum length in bytes of a SPIFFE ID, as set by the SPIFFE ID specification.
const MaxLength = 2048

// MaxTrustDomainLength is the maximum length in bytes of a trust domain name (a DNS name).
const MaxTrustDomainLength = 255

const prefix = Scheme + "://"

// ErrInvalid is wrapped by every validation error of this package; test for it with errors.Is.
var ErrInvalid = errors.New("invalid SPIFFE ID")

// ID is a SPIFFE ID. The zero value is "no identity" (IsZero reports true) and is never returned together with a nil
// error. IDs are comparable with ==.
type ID struct {
	trustDomain string
	path        string // "" or "/seg(/seg)*"
}

// Parse parses a SPIFFE ID in canonical form, e.g. "spiffe://cluster.local/ns/default/sa/web".
func Parse(s string) (ID, error) {
	if len(s) > MaxLength {
		return ID{}, invalid("longer than %d bytes", MaxLength)
	}
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return ID{}, invalid("scheme must be %q", prefix)
	}
	td, path := rest, ""
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		td, path = rest[:i], rest[i:]
	}
	if err := ValidateTrustDomain(td); err != nil {
		return ID{}, err
	}
	if err := validatePath(path); err != nil {
		return ID{}, err
	}
	return ID{trustDomain: td, path: path}, nil
}

// FromURI converts a URI, as found in a certificate's URI SAN, to an ID. It applies the same rules as Parse.
func FromURI(u *url.URL) (ID, error) {
	if u == nil {
		return ID{}, invalid("empty URI")
	}
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawFragment != "" {
		return ID{}, invalid("URI has parts a SPIFFE ID cannot have")
	}
	if u.RawPath != "" {
		return ID{}, invalid("path must not be percent-encoded")
	}
	return Parse(u.String())
}

// FromCertificate returns the SPIFFE ID of an X.509-SVID: the certificate's only URI SAN. It refuses certificates
// with no URI or more than one. It does not verify the certificate.
func FromCertificate(cert *x509.Certificate) (ID, error) {
	if cert == nil {
		return ID{}, invalid("no certificate")
	}
	if len(cert.URIs) != 1 {
		return ID{}, invalid("certificate has %d URI SANs, want exactly 1", len(cert.URIs))
	}
	return FromURI(cert.URIs[0])
}

// New returns the ID for a trust domain and a path made of the given segments, e.g.
// New("cluster.local", "ns", "default", "sa", "web").
func New(trustDomain string, segments ...string) (ID, error) {
	if err := ValidateTrustDomain(trustDomain); err != nil {
		return ID{}, err
	}
	path := ""
	if len(segments) > 0 {
		path = "/" + strings.Join(segments, "/")
	}
	if err := validatePath(path); err != nil {
		return ID{}, err
	}
	id := ID{trustDomain: trustDomain, path: path}
	if len(id.String()) > MaxLength {
		return ID{}, invalid("longer than %d bytes", MaxLength)
	}
	return id, nil
}

// FromServiceAccount returns the workload identity of a Kubernetes ServiceAccount:
// spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>. The namespace must be a DNS-1123 label and the
// ServiceAccount name a DNS-1123 subdomain, as Kubernetes requires.
func FromServiceAccount(trustDomain, namespace, serviceAccount string) (ID, error) {
	if err := validateDNSLabel(namespace); err != nil {
		return ID{}, invalid("namespace %q: %v", namespace, err)
	}
	if err := validateDNSSubdomain(serviceAccount); err != nil {
		return ID{}, invalid("service account %q: %v", serviceAccount, err)
	}
	return New(trustDomain, "ns", namespace, "sa", serviceAccount)
}

// MustParse is Parse for constants in tests and tables; it panics on an invalid ID.
func MustParse(s string) ID {
	id, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return id
}

// TrustDomain returns the trust domain, e.g. "cluster.local".
func (id ID) TrustDomain() string { return id.trustDomain }

// Path returns the path, "" or starting with "/", e.g. "/ns/default/sa/web".
func (id ID) Path() string { return id.path }

// IsZero reports whether id is the zero ID (no identity).
func (id ID) IsZero() bool { return id.trustDomain == "" }

// String returns the canonical form, or "" for the zero ID.
func (id ID) String() string {
	if id.IsZero() {
		return ""
	}
	return prefix + id.trustDomain + id.path
}

// URL returns the ID as a URI suitable for x509.Certificate.URIs, or nil for the zero ID.
func (id ID) URL() *url.URL {
	if id.IsZero() {
		return nil
	}
	return &url.URL{Scheme: Scheme, Host: id.trustDomain, Path: id.path}
}

// ServiceAccount returns the namespace and ServiceAccount name of a workload identity
// (/ns/<namespace>/sa/<serviceAccount>); ok is false for any other path.
func (id ID) ServiceAccount() (namespace, serviceAccount string, ok bool) {
	segs := strings.Split(strings.TrimPrefix(id.path, "/"), "/")
	if len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return "", "", false
	}
	if validateDNSLabel(segs[1]) != nil || validateDNSSubdomain(segs[3]) != nil {
		return "", "", false
	}
	return segs[1], segs[3], true
}

// MarshalText implements encoding.TextMarshaler; the zero ID encodes as "".
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with Parse; "" decodes to the zero ID.
func (id *ID) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*id = ID{}
		return nil
	}
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}

// ValidateTrustDomain checks a trust domain name: 1–255 bytes of lowercase letters, digits, '.', '-' and '_'.
func ValidateTrustDomain(td string) error {
	if td == "" {
		return invalid("trust domain is empty")
	}
	if len(td) > MaxTrustDomainLength {
		return invalid("trust domain longer than %d bytes", MaxTrustDomainLength)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !isTrustDomainChar(c) {
			return invalid("trust domain %q has character %q; only a-z 0-9 . - _ are allowed", td, c)
		}
	}
	return nil
}

// isTrustDomainChar reports whether c may appear in a trust domain: a-z 0-9 . - _.
func isTrustDomainChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}

// isPathChar reports whether c may appear in a path segment: a-z A-Z 0-9 . - _.
func isPathChar(c byte) bool {
	return isTrustDomainChar(c) || c >= 'A' && c <= 'Z'
}

func validatePath(p string) error {
	if p == "" {
		return nil
	}
	for seg := range strings.SplitSeq(p[1:], "/") {
		switch seg {
		case "":
			return invalid("path %q has an empty segment", p)
		case ".", "..":
			return invalid("path %q has a relative segment", p)
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !isPathChar(c) {
				return invalid("path %q has character %q; only a-z A-Z 0-9 . - _ are allowed", p, c)
			}
		}
	}
	return nil
}

// validateDNSLabel checks a DNS-1123 label (Kubernetes namespace names).
func validateDNSLabel(s string) error {
	if s == "" || len(s) > 63 {
		return errors.New("must be 1-63 characters")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return errors.New("must be lowercase alphanumerics or '-', starting and ending with an alphanumeric")
		}
	}
	return nil
}

// validateDNSSubdomain checks a DNS-1123 subdomain (most Kubernetes object names, ServiceAccounts included).
func validateDNSSubdomain(s string) error {
	if s == "" || len(s) > 253 {
		return errors.New("must be 1-253 characters")
	}
	for label := range strings.SplitSeq(s, ".") {
		if err := validateDNSLabel(label); err != nil {
			return errors.New("must be dot-separated lowercase alphanumeric labels, each may contain '-' inside")
		}
	}
	return nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
