package server

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/spiffe"
)

// Certify is the identity service's core, without HTTP: it authenticates token with a TokenReview, checks that
// csrPEM asks for exactly the token's ServiceAccount identity, and signs a leaf with the current issuer. It returns
// the PEM chain (leaf, then issuer chain) or an *identity.Error whose Reason says why it refused. Every call is
// counted in identity_certify_total.
func (s *Server) Certify(ctx context.Context, token string, csrPEM []byte) ([]byte, error) {
	chain, err := s.certify(ctx, token, csrPEM)
	reason := identity.ReasonOf(err)
	s.metrics.observe(reason)
	if err != nil {
		s.log.Info("Refused certificate request", "reason", string(reason), "result", reason.Result(),
			"detail", asError(err).Message)
	}
	return chain, err
}

func (s *Server) certify(ctx context.Context, token string, csrPEM []byte) ([]byte, error) {
	if token == "" {
		return nil, identity.Errorf(identity.ReasonMissingToken, "no token")
	}
	csr, requested, err := identity.ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	sa, user, err := s.authenticate(ctx, token)
	if err != nil {
		return nil, err
	}
	if requested != sa {
		if !s.isNodeProxy(sa) {
			return nil, identity.Errorf(identity.ReasonIdentityMismatch,
				"csr asks for %s but the token belongs to %s", requested, sa)
		}
		node, err := s.authorizeNode(ctx, user, requested)
		if err != nil {
			return nil, err
		}
		s.log.V(1).Info("Node proxy may hold the identity of a pod on its node", "node", node,
			"identity", requested.String(), "nodeProxy", sa.String())
	}
	iss := s.issuer.Load()
	if iss == nil {
		return nil, identity.Errorf(identity.ReasonIssuerUnavailable, "identity issuer Secret %s is not loaded", s.opts.IssuerSecret)
	}
	now := s.clock.Now()
	if now.Before(iss.cert.NotBefore) {
		return nil, identity.Errorf(identity.ReasonIssuerNotYetValid, "identity issuer is not valid before %s", iss.cert.NotBefore.UTC())
	}
	if !now.Before(iss.cert.NotAfter) {
		return nil, identity.Errorf(identity.ReasonIssuerExpired, "identity issuer expired at %s", iss.cert.NotAfter.UTC())
	}
	leaf, err := s.sign(iss, csr, requested, now)
	if err != nil {
		return nil, identity.Errorf(identity.ReasonSigningFailed, "signing failed: %v", err)
	}
	s.log.Info("Issued certificate", "identity", requested.String(), "serial", leaf.SerialNumber.Text(16),
		"notAfter", leaf.NotAfter.UTC())
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}), iss.chain...), nil
}

// authenticate asks the TokenReview API who token belongs to, for the service's audience, and returns that
// ServiceAccount's SPIFFE ID and the authenticated user.
func (s *Server) authenticate(ctx context.Context, token string) (spiffe.ID, authenticationv1.UserInfo, error) {
	review, err := s.reviewer.Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{s.opts.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return spiffe.ID{}, authenticationv1.UserInfo{}, identity.Errorf(identity.ReasonTokenReviewFailed, "TokenReview failed: %v", err)
	}
	st := review.Status
	if !st.Authenticated {
		return spiffe.ID{}, authenticationv1.UserInfo{}, identity.Errorf(classifyUnauthenticated(st.Error), "token not authenticated: %s", orUnknown(st.Error))
	}
	// An audience-aware API server echoes the audiences it checked; one that does not may have ignored them.
	if !slices.Contains(st.Audiences, s.opts.Audience) {
		return spiffe.ID{}, authenticationv1.UserInfo{}, identity.Errorf(identity.ReasonWrongAudience,
			"the API server did not confirm audience %q (got %q)", s.opts.Audience, st.Audiences)
	}
	ns, name, ok := serviceAccountFromUsername(st.User.Username)
	if !ok {
		return spiffe.ID{}, authenticationv1.UserInfo{}, identity.Errorf(identity.ReasonNotServiceAccount, "token belongs to %q, not a ServiceAccount", st.User.Username)
	}
	id, err := spiffe.FromServiceAccount(s.opts.TrustDomain, ns, name)
	if err != nil {
		return spiffe.ID{}, authenticationv1.UserInfo{}, identity.Errorf(identity.ReasonNotServiceAccount, "ServiceAccount %s/%s: %v", ns, name, err)
	}
	return id, st.User, nil
}

// classifyUnauthenticated maps the TokenReview status error of a refused token to a Reason. The texts are those of
// the kube-apiserver ServiceAccount token authenticator (k8s.io/kubernetes/pkg/serviceaccount); anything else is
// ReasonInvalidToken.
func classifyUnauthenticated(msg string) identity.Reason {
	m := strings.ToLower(msg)
	switch {
	case strings.Contains(m, "audience"):
		return identity.ReasonWrongAudience
	case strings.Contains(m, "has expired"), strings.Contains(m, "not valid yet"), strings.Contains(m, "issued in the future"):
		return identity.ReasonTokenExpired
	case strings.Contains(m, "invalidated"), strings.Contains(m, "has been deleted"),
		strings.Contains(m, "does not match"), strings.Contains(m, "not found"):
		return identity.ReasonTokenRevoked
	default:
		return identity.ReasonInvalidToken
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// serviceAccountFromUsername splits "system:serviceaccount:<namespace>:<name>".
func serviceAccountFromUsername(u string) (namespace, name string, ok bool) {
	rest, ok := strings.CutPrefix(u, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, ":")
	if !ok || namespace == "" || name == "" || strings.Contains(name, ":") {
		return "", "", false
	}
	return namespace, name, true
}

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 127)

// sign issues the leaf for id and csr's key. Only the SPIFFE ID and the key come from the CSR; everything else is
// set here: an empty subject (so the SAN is critical), usages for TLS client and server, no CA, a random 128-bit
// serial, NotBefore backdated but not before the issuer's, NotAfter after LeafLifetime but not after the issuer's.
func (s *Server) sign(iss *issuer, csr *x509.CertificateRequest, id spiffe.ID, now time.Time) (*x509.Certificate, error) {
	serial, err := rand.Int(s.opts.Rand, serialLimit)
	if err != nil {
		return nil, err
	}
	notBefore := now.Add(-s.opts.Backdate)
	if notBefore.Before(iss.cert.NotBefore) {
		notBefore = iss.cert.NotBefore
	}
	notAfter := now.Add(s.opts.LeafLifetime)
	if notAfter.After(iss.cert.NotAfter) {
		notAfter = iss.cert.NotAfter
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(s.opts.Rand, tmpl, iss.cert, csr.PublicKey, iss.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// Handler returns the HTTP handler of the protocol (POST identity.CertifyPath); Start serves it over TLS.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(identity.CertifyPath, s.serveCertify)
	return mux
}

func (s *Server) serveCertify(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.refuse(w, http.StatusMethodNotAllowed, identity.Errorf(identity.ReasonMalformedRequest, "method %s not allowed", r.Method))
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		s.refuse(w, http.StatusUnsupportedMediaType, identity.Errorf(identity.ReasonMalformedRequest, "Content-Type must be application/json"))
		return
	}
	if r.ContentLength > identity.MaxRequestBytes {
		s.refuse(w, http.StatusRequestEntityTooLarge, identity.Errorf(identity.ReasonMalformedRequest, "body exceeds %d bytes", identity.MaxRequestBytes))
		return
	}
	token, err := identity.ParseBearer(r.Header.Get("Authorization"))
	if err != nil {
		s.refuse(w, 0, asError(err))
		return
	}
	req, err := identity.DecodeRequest(r.Body)
	if err != nil {
		s.refuse(w, 0, asError(err))
		return
	}
	chain, err := s.Certify(r.Context(), token, []byte(req.CSR))
	if err != nil {
		e := asError(err)
		writeJSON(w, e.Reason.HTTPStatus(), identity.ErrorResponse{Reason: e.Reason, Message: e.Message})
		return
	}
	writeJSON(w, http.StatusOK, identity.CertifyResponse{CertificateChain: string(chain)})
}

// refuse answers a request refused before Certify and counts it. status 0 means the reason's status.
func (s *Server) refuse(w http.ResponseWriter, status int, e *identity.Error) {
	s.metrics.observe(e.Reason)
	s.log.V(1).Info("Refused malformed certificate request", "reason", string(e.Reason), "detail", e.Message)
	if status == 0 {
		status = e.Reason.HTTPStatus()
	}
	writeJSON(w, status, identity.ErrorResponse{Reason: e.Reason, Message: e.Message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// asError returns err's *identity.Error, or wraps an unexpected error as ReasonSigningFailed.
func asError(err error) *identity.Error {
	if e, ok := errors.AsType[*identity.Error](err); ok {
		return e
	}
	return identity.Errorf(identity.ReasonSigningFailed, "%v", err)
}
