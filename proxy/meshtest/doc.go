// Package meshtest holds end-to-end tests of mesh TLS between two proxies run by proxy.Run, exactly as cmd/proxy
// runs them, with workload certificates from the real identity service (internal/identity/server, with a fake
// TokenReview API and Secrets in a fake clientset) over the real certify protocol: certificate renewal and issuer
// rotation under load, and readiness. It has no code outside its tests.
package meshtest
