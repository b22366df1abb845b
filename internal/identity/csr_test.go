package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/trellis-mesh/trellis/internal/spiffe"
)

var webID = spiffe.MustParse("spiffe://cluster.local/ns/shop/sa/web")

func ecKey(t testing.TB, c elliptic.Curve) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t testing.TB, bits int) crypto.Signer {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrPEM(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func uris(ids ...string) []*url.URL {
	var out []*url.URL
	for _, s := range ids {
		u, err := url.Parse(s)
		if err != nil {
			panic(err)
		}
		out = append(out, u)
	}
	return out
}

// sanExtension builds a raw subjectAltName extension from GeneralName elements.
func sanExtension(t testing.TB, names ...asn1.RawValue) pkix.Extension {
	t.Helper()
	v, err := asn1.Marshal(names)
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidSubjectAltName, Value: v}
}

func uriName(s string) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tagURI, Bytes: []byte(s)}
}

// CSRCase is one CSR with the outcome ParseCSR must produce.
type csrCase struct {
	name string
	pem  []byte
	want Reason // ReasonIssued for accepted
}

func csrCases(t testing.TB) []csrCase {
	p256 := ecKey(t, elliptic.P256())
	good := csrPEM(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}})
	badSig := func() []byte {
		block, _ := pem.Decode(good)
		der := append([]byte(nil), block.Bytes...)
		der[len(der)-3] ^= 0x40 // inside the signature value
		return pem.EncodeToMemory(&pem.Block{Type: block.Type, Bytes: der})
	}()
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	return []csrCase{
		{"ECDSA P-256", good, ReasonIssued},
		{"ECDSA P-384", csrPEM(t, ecKey(t, elliptic.P384()), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}), ReasonIssued},
		{"RSA 2048", csrPEM(t, rsaKey(t, 2048), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}), ReasonIssued},
		{"subject is ignored", csrPEM(t, p256, &x509.CertificateRequest{
			Subject: pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}}, URIs: []*url.URL{webID.URL()},
		}), ReasonIssued},
		{"RSA 1024", csrPEM(t, rsaKey(t, 1024), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}), ReasonWeakKey},
		{"ECDSA P-224", csrPEM(t, ecKey(t, elliptic.P224()), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}), ReasonWeakKey},
		{"ECDSA P-521", csrPEM(t, ecKey(t, elliptic.P521()), &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}), ReasonWeakKey},
		{"Ed25519", csrPEM(t, edKey, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}}), ReasonWeakKey},
		{"bad signature", badSig, ReasonBadCSRSignature},
		{"extra DNS name", csrPEM(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}, DNSNames: []string{"web.shop.svc"}}), ReasonExtraSAN},
		{"extra IP", csrPEM(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}), ReasonExtraSAN},
		{"extra e-mail", csrPEM(t, p256, &x509.CertificateRequest{URIs: []*url.URL{webID.URL()}, EmailAddresses: []string{"a@b.c"}}), ReasonExtraSAN},
		{"second URI", csrPEM(t, p256, &x509.CertificateRequest{URIs: uris(webID.String(), "spiffe://cluster.local/ns/shop/sa/b")}), ReasonExtraSAN},
		{"otherName SAN", csrPEM(t, p256, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(t,
			uriName(webID.String()),
			asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: []byte{0x06, 0x01, 0x2a, 0xa0, 0x02, 0x05, 0x00}},
		)}}), ReasonExtraSAN},
		{"registeredID SAN", csrPEM(t, p256, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(t,
			uriName(webID.String()), asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: []byte{0x2a}},
		)}}), ReasonExtraSAN},
		{"no SAN", csrPEM(t, p256, &x509.CertificateRequest{Subject: pkix.Name{CommonName: webID.String()}}), ReasonMissingSAN},
		{"only a DNS name", csrPEM(t, p256, &x509.CertificateRequest{DNSNames: []string{"web"}}), ReasonExtraSAN},
		{"empty SAN", csrPEM(t, p256, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{sanExtension(t)}}), ReasonMissingSAN},
		{"not a SPIFFE URI", csrPEM(t, p256, &x509.CertificateRequest{URIs: uris("https://web.shop")}), ReasonInvalidSPIFFEID},
		{"non-canonical SPIFFE ID", csrPEM(t, p256, &x509.CertificateRequest{URIs: uris("spiffe://Cluster.local/ns/shop/sa/web")}), ReasonInvalidSPIFFEID},
		{"not PEM", []byte("hello"), ReasonMalformedCSR},
		{"wrong PEM type", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), ReasonMalformedCSR},
		{"two PEM blocks", append(append([]byte(nil), good...), good...), ReasonMalformedCSR},
		{"PEM headers", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}), ReasonMalformedCSR},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x01}}), ReasonMalformedCSR},
	}
}

func TestParseCSR(t *testing.T) {
	for _, tc := range csrCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			csr, id, err := ParseCSR(tc.pem)
			if got := ReasonOf(err); got != tc.want {
				t.Fatalf("reason %s (%v), want %s", got, err, tc.want)
			}
			if err != nil {
				if csr != nil || !id.IsZero() {
					t.Fatal("refused CSR returned a request or an ID")
				}
				if e, ok := errors.AsType[*Error](err); !ok || e.Message == "" {
					t.Fatalf("refusal without a message: %v", err)
				}
				return
			}
			if id != webID {
				t.Fatalf("id %v, want %v", id, webID)
			}
		})
	}
}

func TestNewCSRRoundTrip(t *testing.T) {
	key := ecKey(t, elliptic.P256())
	p, err := NewCSR(key, webID)
	if err != nil {
		t.Fatal(err)
	}
	csr, id, err := ParseCSR(p)
	if err != nil || id != webID {
		t.Fatalf("ParseCSR(NewCSR) = %v, %v", id, err)
	}
	if !key.Public().(*ecdsa.PublicKey).Equal(csr.PublicKey) {
		t.Fatal("CSR carries another key")
	}
	if len(csr.Subject.Names) != 0 {
		t.Fatalf("NewCSR set a subject: %v", csr.Subject)
	}
}

func checkAccepted(t *testing.T, csr *x509.CertificateRequest, id spiffe.ID) {
	t.Helper()
	if len(csr.URIs) != 1 || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
		t.Fatalf("accepted CSR with SANs URIs=%v DNS=%v IP=%v email=%v", csr.URIs, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	if got, err := spiffe.FromURI(csr.URIs[0]); err != nil || got != id {
		t.Fatalf("accepted CSR's URI %v does not match %v (%v)", csr.URIs[0], id, err)
	}
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		t.Fatalf("accepted CSR with a refused key: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("accepted CSR with a bad signature: %v", err)
	}
}

var csrReasons = map[Reason]bool{
	ReasonMalformedCSR: true, ReasonWeakKey: true, ReasonBadCSRSignature: true, ReasonMissingSAN: true,
	ReasonExtraSAN: true, ReasonInvalidSPIFFEID: true,
}

func FuzzParseCSR(f *testing.F) {
	for _, tc := range csrCases(f) {
		f.Add(tc.pem)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		csr, id, err := ParseCSR(in)
		if err != nil {
			if r := ReasonOf(err); !csrReasons[r] {
				t.Fatalf("unexpected reason %s: %v", r, err)
			}
			return
		}
		checkAccepted(t, csr, id)
	})
}

// FuzzParseCSRDER fuzzes the DER inside a well-formed PEM block, where the ASN.1 and SAN parsing lives.
func FuzzParseCSRDER(f *testing.F) {
	for _, tc := range csrCases(f) {
		if b, _ := pem.Decode(tc.pem); b != nil && b.Type == "CERTIFICATE REQUEST" && len(b.Headers) == 0 {
			f.Add(b.Bytes)
		}
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, id, err := ParseCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
		if err != nil {
			if r := ReasonOf(err); !csrReasons[r] {
				t.Fatalf("unexpected reason %s: %v", r, err)
			}
			return
		}
		checkAccepted(t, csr, id)
	})
}

func TestCheckPublicKey(t *testing.T) {
	smallExp := rsaKey(t, 2048).Public().(*rsa.PublicKey)
	smallExp = &rsa.PublicKey{N: smallExp.N, E: 3}
	for _, tc := range []struct {
		name string
		pub  any
		ok   bool
	}{
		{"P-256", ecKey(t, elliptic.P256()).Public(), true},
		{"RSA 4096", rsaKey(t, 4096).Public(), true},
		{"RSA exponent 3", smallExp, false},
		{"nil", nil, false},
		{"string", "key", false},
	} {
		if err := CheckPublicKey(tc.pub); (err == nil) != tc.ok || err != nil && ReasonOf(err) != ReasonWeakKey {
			t.Errorf("%s: CheckPublicKey = %v", tc.name, err)
		}
	}
	if err := CheckPublicKey(rsaKey(t, 2048).Public()); err != nil || !strings.Contains(Errorf(ReasonWeakKey, "x").Error(), "WeakKey") {
		t.Fatal(err)
	}
}
