package security

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// MinTokenLen is the shortest bearer token accepted in a tokens file.
const MinTokenLen = 16

// Identity is who made a call: a bearer token's name and role, or a client
// certificate's common name and roles.
type Identity struct {
	Name  string
	Roles []string
	Via   string // "token" or "certificate"
}

// String names the identity for an error: how it was presented, its name
// and roles.
func (id Identity) String() string {
	return fmt.Sprintf("%s %q (role %s)", id.Via, id.Name, strings.Join(id.Roles, ","))
}

// Token is one accepted bearer token, kept as its hash, with the role it
// grants and a name for messages.
type Token struct {
	hash [32]byte
	Role string
	Name string
}

// ParseTokens reads a tokens file: one "TOKEN ROLE [NAME]" a line, blank
// lines and #-comments skipped. Every bad line is reported at once.
func ParseTokens(path string) ([]Token, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--auth-tokens: %w", err)
	}
	defer f.Close()
	var out []Token
	var errs []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		switch {
		case len(fields) < 2 || len(fields) > 3:
			errs = append(errs, fmt.Sprintf("line %d: want \"TOKEN ROLE [NAME]\", got %d fields", n, len(fields)))
			continue
		case len(fields[0]) < MinTokenLen:
			errs = append(errs, fmt.Sprintf("line %d: token of %d characters; use at least %d (e.g. `openssl rand -hex 32`)", n, len(fields[0]), MinTokenLen))
			continue
		case fields[1] != RoleAdmin && fields[1] != RoleViewer && fields[1] != RoleWorker:
			errs = append(errs, fmt.Sprintf("line %d: role %q; want admin, viewer or worker", n, fields[1]))
			continue
		}
		t := Token{hash: sha256.Sum256([]byte(fields[0])), Role: fields[1], Name: fields[1]}
		if len(fields) == 3 {
			t.Name = fields[2]
		}
		out = append(out, t)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--auth-tokens %s: %w", path, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("--auth-tokens %s:\n  %s", path, strings.Join(errs, "\n  "))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--auth-tokens %s: no tokens in it", path)
	}
	return out, nil
}

// Authorizer decides who may call what on the coordinator: it
// authenticates a call by its bearer token or, failing that, its client
// certificate's roles, and authorises it by the method's roles
// (MethodRoles). Safe for concurrent use.
type Authorizer struct {
	tokens []Token
	certs  bool // client certificates (verified by the TLS layer) carry roles
}

// NewAuthorizer accepts tokens and, when certs is set, the roles of
// verified client certificates.
func NewAuthorizer(tokens []Token, certs bool) *Authorizer {
	return &Authorizer{tokens: tokens, certs: certs}
}

// MethodRoles is who may call a gRPC method of the coordinator; nil: nobody.
func MethodRoles(fullMethod string) []string {
	switch fullMethod {
	case "/loom.v1.Coordinator/Submit", "/loom.v1.Coordinator/Stop":
		return []string{RoleAdmin}
	case "/loom.v1.Coordinator/Get", "/loom.v1.Coordinator/List", "/loom.v1.Coordinator/Watch":
		return []string{RoleAdmin, RoleViewer, RoleCoordinator}
	case "/loom.v1.Coordinator/Info":
		return []string{RoleAdmin, RoleViewer, RoleWorker, RoleCoordinator}
	case "/loom.v1.Coordinator/ReportSteps":
		return []string{RoleWorker}
	}
	return nil
}

// byToken finds the identity of a bearer token.
func (a *Authorizer) byToken(tok string) (Identity, bool) {
	h := sha256.Sum256([]byte(tok))
	var found *Token
	for i := range a.tokens {
		// Compare every entry so the time taken says nothing of which matched.
		if subtle.ConstantTimeCompare(h[:], a.tokens[i].hash[:]) == 1 {
			found = &a.tokens[i]
		}
	}
	if found == nil {
		return Identity{}, false
	}
	return Identity{Name: found.Name, Roles: []string{found.Role}, Via: "token"}, true
}

// authenticate returns who presented authorization (the header's value,
// "" when none) and cs (nil: no TLS), or an Unauthenticated status.
func (a *Authorizer) authenticate(authorization string, cs *tlsState) (Identity, error) {
	if authorization != "" {
		tok, ok := strings.CutPrefix(authorization, "Bearer ")
		if !ok {
			return Identity{}, status.Error(codes.Unauthenticated, "unauthenticated: the authorization header is not \"Bearer TOKEN\"")
		}
		id, ok := a.byToken(strings.TrimSpace(tok))
		if !ok {
			return Identity{}, status.Error(codes.Unauthenticated, "unauthenticated: the bearer token is not one this coordinator accepts (--auth-tokens); check --token-file or $LOOM_TOKEN")
		}
		return id, nil
	}
	if a.certs && cs != nil && len(cs.certs) > 0 {
		leaf := cs.certs[0]
		roles := CertRoles(leaf)
		if len(roles) == 0 {
			return Identity{}, status.Errorf(codes.Unauthenticated, "unauthenticated: client certificate %s names no role (OU admin, viewer or worker) and no bearer token was presented", describeCert(leaf))
		}
		return Identity{Name: leaf.Subject.CommonName, Roles: roles, Via: "certificate"}, nil
	}
	if a.certs {
		return Identity{}, status.Error(codes.Unauthenticated, "unauthenticated: no bearer token and no client certificate; pass --token-file (or $LOOM_TOKEN) or --tls-dir with a certificate that has a role")
	}
	return Identity{}, status.Error(codes.Unauthenticated, "unauthenticated: no bearer token; this coordinator requires one (pass --token-file or set $LOOM_TOKEN)")
}

// authorize checks that id may call method.
func authorize(id Identity, method string) error {
	need := MethodRoles(method)
	if slices.ContainsFunc(id.Roles, func(r string) bool { return slices.Contains(need, r) }) {
		return nil
	}
	if len(need) == 0 {
		return status.Errorf(codes.PermissionDenied, "permission denied: %s may not call %s (no role may)", id, method)
	}
	return status.Errorf(codes.PermissionDenied, "permission denied: %s may not call %s; it needs role %s", id, method, strings.Join(need, " or "))
}

// tlsState is what authentication reads of a verified TLS connection.
type tlsState struct{ certs []*x509.Certificate }

// check authenticates and authorises the call in ctx.
func (a *Authorizer) check(ctx context.Context, method string) (Identity, error) {
	var authz string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) > 0 {
			authz = v[0]
		}
	}
	var cs *tlsState
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			cs = &tlsState{certs: ti.State.PeerCertificates}
		}
	}
	id, err := a.authenticate(authz, cs)
	if err != nil {
		return id, err
	}
	return id, authorize(id, method)
}

// UnaryInterceptor refuses unauthenticated and unauthorised unary calls.
func (a *Authorizer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if _, err := a.check(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor refuses unauthenticated and unauthorised streams.
func (a *Authorizer) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if _, err := a.check(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// HTTPGuard lets through requests to the open paths (the probes) and, for
// every other path, requests with a bearer token or a verified client
// certificate whose role may read jobs (admin, viewer, coordinator);
// others get 401 or 403 with the reason.
func (a *Authorizer) HTTPGuard(next http.Handler, open ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slices.Contains(open, r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		var cs *tlsState
		if r.TLS != nil {
			cs = &tlsState{certs: r.TLS.PeerCertificates}
		}
		id, err := a.authenticate(r.Header.Get("Authorization"), cs)
		if err != nil {
			http.Error(w, status.Convert(err).Message(), http.StatusUnauthorized)
			return
		}
		if err := authorize(id, "/loom.v1.Coordinator/Get"); err != nil {
			http.Error(w, fmt.Sprintf("permission denied: %s may not read jobs; it needs role admin or viewer", id), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// tokenCreds presents a bearer token on every call.
type tokenCreds struct {
	token  string
	secure bool
}

// GetRequestMetadata is the authorization header.
func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + t.token}, nil
}

// RequireTransportSecurity is false only for plaintext set-ups, which the
// log says send tokens in the clear.
func (t tokenCreds) RequireTransportSecurity() bool { return t.secure }
