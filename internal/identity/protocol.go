// Package identity holds what the identity service (package server) and the workload certificate client (package
// workload) share: the wire protocol, the refusal reasons, and the checks applied to certificate signing requests.
// It has no Kubernetes dependencies, so the proxy can import it cheaply.
//
// # Protocol
//
// HTTPS + JSON, TLS 1.3, on the identity service port (8080):
//
//	POST /v1/certify
//	Authorization: Bearer <projected ServiceAccount token, audience identity.trellis.io>
//	Content-Type: application/json
//
//	{"csr": "-----BEGIN CERTIFICATE REQUEST-----\n..."}
//
// Success is 200 with {"certificateChain": "<PEM: leaf, then issuer chain>"}. A refusal is a 4xx or 5xx status with
// {"reason": "<Reason>", "message": "<text for people>"}; see Reason for the list and the status each one maps to.
// Request bodies are limited to MaxRequestBytes.
package identity

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Audience is the audience the projected ServiceAccount token must carry and that the identity service asks the
// TokenReview API to check.
const Audience = "identity.trellis.io"

// CertifyPath is the HTTP path of the certify call.
const CertifyPath = "/v1/certify"

// DefaultPort is the port the identity service listens on.
const DefaultPort = 8080

// MaxRequestBytes bounds the body of a certify request (a CSR is well under 4 KiB).
const MaxRequestBytes = 64 << 10

// MaxTokenBytes bounds the bearer token; projected ServiceAccount tokens are about 1 KiB.
const MaxTokenBytes = 16 << 10

// CertifyRequest is the JSON body of a certify request.
type CertifyRequest struct {
	// CSR is the PEM-encoded PKCS#10 certificate signing request (one "CERTIFICATE REQUEST" block).
	CSR string `json:"csr"`
}

// CertifyResponse is the JSON body of a successful certify call.
type CertifyResponse struct {
	// CertificateChain is PEM: the issued leaf first, then the issuer and any intermediates, never the trust anchor.
	CertificateChain string `json:"certificateChain"`
}

// ErrorResponse is the JSON body of a refused certify call.
type ErrorResponse struct {
	// Reason is the machine-readable refusal reason.
	Reason Reason `json:"reason"`
	// Message explains the refusal to a person.
	Message string `json:"message"`
}

// DecodeRequest strictly decodes a certify request body: one JSON object, no unknown fields, at most
// MaxRequestBytes, a non-empty csr.
func DecodeRequest(r io.Reader) (CertifyRequest, error) {
	var req CertifyRequest
	dec := json.NewDecoder(io.LimitReader(r, MaxRequestBytes+1))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return CertifyRequest{}, Errorf(ReasonMalformedRequest, "request body is not a certify request: %v", err)
	}
	if dec.InputOffset() > MaxRequestBytes {
		return CertifyRequest{}, Errorf(ReasonMalformedRequest, "request body exceeds %d bytes", MaxRequestBytes)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return CertifyRequest{}, Errorf(ReasonMalformedRequest, "request body has data after the JSON object")
	}
	if req.CSR == "" {
		return CertifyRequest{}, Errorf(ReasonMalformedRequest, "request has no csr")
	}
	return req, nil
}

// ParseBearer extracts the token from an Authorization header value "Bearer <token>" (scheme case-insensitive).
// The token must be a JWT in compact form (three base64url segments) no longer than MaxTokenBytes; projected
// ServiceAccount tokens always are. It does not verify the token: only the TokenReview API does.
func ParseBearer(header string) (string, error) {
	if header == "" {
		return "", Errorf(ReasonMissingToken, "no Authorization header")
	}
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", Errorf(ReasonMissingToken, "Authorization header is not a bearer token")
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", Errorf(ReasonMissingToken, "bearer token is empty")
	}
	if len(token) > MaxTokenBytes {
		return "", Errorf(ReasonInvalidToken, "bearer token exceeds %d bytes", MaxTokenBytes)
	}
	dots := 0
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case c == '.':
			dots++
			if i == 0 || token[i-1] == '.' {
				return "", Errorf(ReasonInvalidToken, "bearer token is not a JWT")
			}
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return "", Errorf(ReasonInvalidToken, "bearer token is not a JWT")
		}
	}
	if dots != 2 || token[len(token)-1] == '.' {
		return "", Errorf(ReasonInvalidToken, "bearer token is not a JWT")
	}
	return token, nil
}

// ReadErrorResponse decodes a refusal from an HTTP response with a non-200 status into an *Error. Unknown or
// undecodable bodies become ReasonUnknown with the status in the message.
func ReadErrorResponse(resp *http.Response) *Error {
	var body ErrorResponse
	dec := json.NewDecoder(io.LimitReader(resp.Body, MaxRequestBytes))
	if err := dec.Decode(&body); err != nil || body.Reason == "" {
		return &Error{Reason: ReasonUnknown, Message: fmt.Sprintf("identity service answered %s", resp.Status)}
	}
	return &Error{Reason: body.Reason, Message: body.Message}
}
