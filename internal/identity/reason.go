package identity

import (
	"errors"
	"fmt"
	"net/http"
)

// Reason is a machine-readable outcome of a certify call. It is the "reason" field of refusals, the reason label of
// the identity_certify_total metric, and the Reason of an *Error.
type Reason string

// Reasons. Each documents the HTTP status it maps to (see HTTPStatus) and whether it is the caller's fault
// (Result "refused") or the service's (Result "failed").
const (
	// ReasonIssued means a certificate was issued (200).
	ReasonIssued Reason = "Issued"

	// ReasonMalformedRequest means the request is not a certify request: wrong method, media type, size or JSON (400).
	ReasonMalformedRequest Reason = "MalformedRequest"
	// ReasonMissingToken means there is no bearer token (401).
	ReasonMissingToken Reason = "MissingToken"
	// ReasonInvalidToken means the token is not a JWT, or the TokenReview API did not authenticate it for a reason
	// not covered below, e.g. a bad signature or an unknown issuer (401).
	ReasonInvalidToken Reason = "InvalidToken"
	// ReasonWrongAudience means the token was not issued for Audience (401).
	ReasonWrongAudience Reason = "WrongAudience"
	// ReasonTokenExpired means the token is past its expiry, or not valid yet (401).
	ReasonTokenExpired Reason = "TokenExpired"
	// ReasonTokenRevoked means the token was valid but the object it is bound to (ServiceAccount, Pod, Secret, Node)
	// is gone or was replaced (401).
	ReasonTokenRevoked Reason = "TokenRevoked"
	// ReasonNotServiceAccount means the token authenticated a user that is not a ServiceAccount (403).
	ReasonNotServiceAccount Reason = "NotServiceAccount"
	// ReasonMalformedCSR means the csr is not exactly one PEM "CERTIFICATE REQUEST" holding a parsable PKCS#10
	// request (400).
	ReasonMalformedCSR Reason = "MalformedCSR"
	// ReasonBadCSRSignature means the CSR's signature does not verify with the public key it carries (400).
	ReasonBadCSRSignature Reason = "BadCSRSignature"
	// ReasonWeakKey means the CSR's public key is not allowed: see CheckPublicKey (400).
	ReasonWeakKey Reason = "WeakKey"
	// ReasonMissingSAN means the CSR asks for no URI SAN (400).
	ReasonMissingSAN Reason = "MissingSAN"
	// ReasonExtraSAN means the CSR asks for more than exactly one URI SAN: DNS names, IP addresses, e-mail addresses,
	// other name types, a second URI, or a second SAN extension (400).
	ReasonExtraSAN Reason = "ExtraSAN"
	// ReasonInvalidSPIFFEID means the CSR's URI SAN is not a valid SPIFFE ID (400).
	ReasonInvalidSPIFFEID Reason = "InvalidSPIFFEID"
	// ReasonIdentityMismatch means the CSR asks for an identity other than the token's ServiceAccount identity,
	// another trust domain included (403).
	ReasonIdentityMismatch Reason = "IdentityMismatch"
	// ReasonNodeNotAuthorized means a node proxy's token asks for the identity of a ServiceAccount that has no pod
	// served by the node proxy (labelled mesh.trellis.io/proxy=node, not finished) on the token's node, or the token
	// names no node (403).
	ReasonNodeNotAuthorized Reason = "NodeNotAuthorized"

	// ReasonTokenReviewFailed means the TokenReview API could not be called (503; retry).
	ReasonTokenReviewFailed Reason = "TokenReviewFailed"
	// ReasonNodeLookupFailed means the pods of a node proxy's node could not be read from the API (503; retry).
	ReasonNodeLookupFailed Reason = "NodeLookupFailed"
	// ReasonIssuerUnavailable means the identity issuer Secret has not been loaded (missing or invalid) (503).
	ReasonIssuerUnavailable Reason = "IssuerUnavailable"
	// ReasonIssuerNotYetValid means the issuer certificate's NotBefore is in the future (503).
	ReasonIssuerNotYetValid Reason = "IssuerNotYetValid"
	// ReasonIssuerExpired means the issuer certificate has expired (503).
	ReasonIssuerExpired Reason = "IssuerExpired"
	// ReasonSigningFailed means signing the certificate failed (500).
	ReasonSigningFailed Reason = "SigningFailed"

	// ReasonUnknown is used by clients for an answer they cannot decode; the server never sends it.
	ReasonUnknown Reason = "Unknown"
)

// Results: the result label of identity_certify_total.
const (
	// ResultIssued labels issued certificates.
	ResultIssued = "issued"
	// ResultRefused labels requests refused because of the caller (bad token, bad CSR).
	ResultRefused = "refused"
	// ResultFailed labels requests the service could not serve (issuer or API server trouble).
	ResultFailed = "failed"
)

// HTTPStatus returns the HTTP status code the identity service answers with for r.
func (r Reason) HTTPStatus() int {
	switch r {
	case ReasonIssued:
		return http.StatusOK
	case ReasonMissingToken, ReasonInvalidToken, ReasonWrongAudience, ReasonTokenExpired, ReasonTokenRevoked:
		return http.StatusUnauthorized
	case ReasonNotServiceAccount, ReasonIdentityMismatch, ReasonNodeNotAuthorized:
		return http.StatusForbidden
	case ReasonMalformedRequest, ReasonMalformedCSR, ReasonBadCSRSignature, ReasonWeakKey, ReasonMissingSAN,
		ReasonExtraSAN, ReasonInvalidSPIFFEID:
		return http.StatusBadRequest
	case ReasonTokenReviewFailed, ReasonNodeLookupFailed, ReasonIssuerUnavailable, ReasonIssuerNotYetValid,
		ReasonIssuerExpired:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// Result returns the result label for r: ResultIssued, ResultRefused or ResultFailed.
func (r Reason) Result() string {
	switch status := r.HTTPStatus(); {
	case status == http.StatusOK:
		return ResultIssued
	case status < 500:
		return ResultRefused
	default:
		return ResultFailed
	}
}

// Error is a certify refusal: a Reason plus a message for people.
type Error struct {
	// Reason is the machine-readable reason.
	Reason Reason
	// Message explains the refusal; it never contains the token.
	Message string
}

// Error implements error.
func (e *Error) Error() string { return string(e.Reason) + ": " + e.Message }

// Errorf returns an *Error with a formatted message.
func Errorf(reason Reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// ReasonOf returns the Reason of the first *Error in err's chain, ReasonIssued for nil, or ReasonUnknown.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonIssued
	}
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Reason
	}
	return ReasonUnknown
}
