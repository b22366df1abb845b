package identity

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestParseBearer(t *testing.T) {
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
	tests := []struct {
		header string
		want   string
		reason Reason
	}{
		{header: "Bearer " + jwt, want: jwt, reason: ReasonIssued},
		{header: "bearer " + jwt, want: jwt, reason: ReasonIssued},
		{header: "Bearer  " + jwt + " ", want: jwt, reason: ReasonIssued},
		{header: "", reason: ReasonMissingToken},
		{header: "Bearer", reason: ReasonMissingToken},
		{header: "Bearer ", reason: ReasonMissingToken},
		{header: "Basic dXNlcjpwYXNz", reason: ReasonMissingToken},
		{header: "Bearer opaque-token", reason: ReasonInvalidToken},
		{header: "Bearer a.b", reason: ReasonInvalidToken},
		{header: "Bearer a.b.c.d", reason: ReasonInvalidToken},
		{header: "Bearer a..c", reason: ReasonInvalidToken},
		{header: "Bearer .b.c", reason: ReasonInvalidToken},
		{header: "Bearer a.b.", reason: ReasonInvalidToken},
		{header: "Bearer a.b.c=", reason: ReasonInvalidToken},
		{header: "Bearer a.b c.d", reason: ReasonInvalidToken},
		{header: "Bearer a.b.\x00", reason: ReasonInvalidToken},
		{header: "Bearer a.b." + strings.Repeat("c", MaxTokenBytes), reason: ReasonInvalidToken},
	}
	for _, tt := range tests {
		name := tt.header
		if len(name) > 40 {
			name = name[:40]
		}
		t.Run(name, func(t *testing.T) {
			got, err := ParseBearer(tt.header)
			if ReasonOf(err) != tt.reason || got != tt.want {
				t.Fatalf("ParseBearer = %q, %v; want %q, %s", got, err, tt.want, tt.reason)
			}
		})
	}
}

func FuzzParseBearer(f *testing.F) {
	for _, s := range []string{"Bearer a.b.c", "bearer x", "Basic a.b.c", "Bearer a..b", "Bearer  a.b.c  "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		tok, err := ParseBearer(header)
		if err != nil {
			if r := ReasonOf(err); r != ReasonMissingToken && r != ReasonInvalidToken {
				t.Fatalf("unexpected reason %s", r)
			}
			if tok != "" {
				t.Fatal("token returned with an error")
			}
			return
		}
		if len(tok) > MaxTokenBytes || strings.Count(tok, ".") != 2 || strings.ContainsAny(tok, " \t\r\n=+/") {
			t.Fatalf("accepted token %q", tok)
		}
		if again, err := ParseBearer("Bearer " + tok); err != nil || again != tok {
			t.Fatalf("round trip of %q: %q, %v", tok, again, err)
		}
	})
}

func TestDecodeRequest(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		want   string
		reason Reason
	}{
		{"ok", `{"csr":"PEM"}`, "PEM", ReasonIssued},
		{"ok with spaces", " {\"csr\" : \"PEM\"}\n", "PEM", ReasonIssued},
		{"empty body", ``, "", ReasonMalformedRequest},
		{"not JSON", `csr=PEM`, "", ReasonMalformedRequest},
		{"unknown field", `{"csr":"PEM","id":"spiffe://x"}`, "", ReasonMalformedRequest},
		{"no csr", `{}`, "", ReasonMalformedRequest},
		{"csr not a string", `{"csr":1}`, "", ReasonMalformedRequest},
		{"two objects", `{"csr":"A"}{"csr":"B"}`, "", ReasonMalformedRequest},
		{"trailing junk", `{"csr":"A"} x`, "", ReasonMalformedRequest},
		{"array", `[{"csr":"A"}]`, "", ReasonMalformedRequest},
		{"too large", `{"csr":"` + strings.Repeat("A", MaxRequestBytes) + `"}`, "", ReasonMalformedRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := DecodeRequest(strings.NewReader(tt.body))
			if ReasonOf(err) != tt.reason || req.CSR != tt.want {
				t.Fatalf("DecodeRequest = %+v, %v", req, err)
			}
		})
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"csr":"x"}`, `{}`, `{"csr":"a"}{"csr":"b"}`, `{"csr":"\u0000"}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodeRequest(bytes.NewReader(body))
		if err != nil {
			if ReasonOf(err) != ReasonMalformedRequest {
				t.Fatalf("unexpected reason: %v", err)
			}
			return
		}
		if req.CSR == "" || len(body) > MaxRequestBytes+64 {
			t.Fatalf("accepted %q", body)
		}
		enc, _ := json.Marshal(req)
		again, err := DecodeRequest(bytes.NewReader(enc))
		if err != nil || again != req {
			t.Fatalf("round trip: %+v, %v", again, err)
		}
	})
}

func TestReasons(t *testing.T) {
	tests := []struct {
		reason Reason
		status int
		result string
	}{
		{ReasonIssued, 200, ResultIssued},
		{ReasonMalformedRequest, 400, ResultRefused},
		{ReasonMissingToken, 401, ResultRefused},
		{ReasonInvalidToken, 401, ResultRefused},
		{ReasonWrongAudience, 401, ResultRefused},
		{ReasonTokenExpired, 401, ResultRefused},
		{ReasonTokenRevoked, 401, ResultRefused},
		{ReasonNotServiceAccount, 403, ResultRefused},
		{ReasonIdentityMismatch, 403, ResultRefused},
		{ReasonMalformedCSR, 400, ResultRefused},
		{ReasonBadCSRSignature, 400, ResultRefused},
		{ReasonWeakKey, 400, ResultRefused},
		{ReasonMissingSAN, 400, ResultRefused},
		{ReasonExtraSAN, 400, ResultRefused},
		{ReasonInvalidSPIFFEID, 400, ResultRefused},
		{ReasonTokenReviewFailed, 503, ResultFailed},
		{ReasonIssuerUnavailable, 503, ResultFailed},
		{ReasonIssuerNotYetValid, 503, ResultFailed},
		{ReasonIssuerExpired, 503, ResultFailed},
		{ReasonSigningFailed, 500, ResultFailed},
		{ReasonUnknown, 500, ResultFailed},
	}
	for _, tt := range tests {
		if s, r := tt.reason.HTTPStatus(), tt.reason.Result(); s != tt.status || r != tt.result {
			t.Errorf("%s: status %d result %s, want %d %s", tt.reason, s, r, tt.status, tt.result)
		}
	}
	if ReasonOf(nil) != ReasonIssued || ReasonOf(io.EOF) != ReasonUnknown {
		t.Fatal("ReasonOf misclassifies")
	}
}

func TestReadErrorResponse(t *testing.T) {
	resp := func(status int, body string) *http.Response {
		return &http.Response{StatusCode: status, Status: http.StatusText(status), Body: io.NopCloser(strings.NewReader(body))}
	}
	forbidden := resp(403, `{"reason":"IdentityMismatch","message":"no"}`)
	defer forbidden.Body.Close()
	e := ReadErrorResponse(forbidden)
	if e.Reason != ReasonIdentityMismatch || e.Message != "no" {
		t.Fatalf("got %+v", e)
	}
	badGateway := resp(502, `<html>bad gateway</html>`)
	defer badGateway.Body.Close()
	if e := ReadErrorResponse(badGateway); e.Reason != ReasonUnknown || !strings.Contains(e.Message, "Bad Gateway") {
		t.Fatalf("got %+v", e)
	}
}
