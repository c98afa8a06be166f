package security

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Bounds of the control plane's messages.
const (
	// MaxMessageBytes is the largest gRPC message a coordinator accepts
	// (and a client sends): a job spec plus its envelope, a batch of step
	// reports.
	MaxMessageBytes = 4 << 20
	// MaxReplyBytes is the largest gRPC message a client accepts (the
	// list of every job with its ranks).
	MaxReplyBytes = 64 << 20
	// MaxSpecBytes is the largest job spec a coordinator stores: it is one
	// etcd value.
	MaxSpecBytes = 1 << 20
	// EtcdMaxRequestBytes is the embedded etcd's request limit (etcd's
	// --max-request-bytes; its default is 1.5 MiB): a spec at MaxSpecBytes
	// and the rest of its transaction fit.
	EtcdMaxRequestBytes = 2 << 20
)

// Setup is one process's security: its TLS material (nil: plaintext), the
// token it presents, and on a coordinator who may call what. Build it with
// New from the flags' Config. Safe for concurrent use.
type Setup struct {
	cfg   Config
	tls   *Material
	auth  *Authorizer
	token string
}

// New loads what c names. server is set for a coordinator, which checks
// callers: by --auth-tokens and, with TLS, by client certificates' roles.
// Other processes still check their HTTP server's callers' certificates
// when TLS is on. log receives certificate reloads and refused handshakes.
func New(c Config, log *slog.Logger, server bool) (*Setup, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	m, err := LoadMaterial(c, log)
	if err != nil {
		return nil, err
	}
	tok, err := c.Token()
	if err != nil {
		return nil, err
	}
	s := &Setup{cfg: c, tls: m, token: tok}
	var tokens []Token
	if server && c.AuthTokens != "" {
		if tokens, err = ParseTokens(c.AuthTokens); err != nil {
			return nil, err
		}
	}
	if m != nil || len(tokens) > 0 {
		s.auth = NewAuthorizer(tokens, m != nil)
	}
	return s, nil
}

// Plaintext is the set-up of a process given no TLS flags and no tokens.
func Plaintext() *Setup { return &Setup{} }

// Secure reports whether connections use mutual TLS.
func (s *Setup) Secure() bool { return s != nil && s.tls != nil }

// Material is the TLS material (nil: plaintext).
func (s *Setup) Material() *Material {
	if s == nil {
		return nil
	}
	return s.tls
}

// Describe says, for the log, how this process's connections are secured.
func (s *Setup) Describe() string {
	if s == nil || s.tls == nil {
		what := "plaintext: connections are unencrypted"
		switch {
		case s != nil && s.auth != nil:
			what += "; bearer tokens are checked but travel in the clear"
		case s != nil && s.token != "":
			what += "; the bearer token travels in the clear"
		default:
			what += " and unauthenticated"
		}
		return what + " (fine on one machine; on a network pass --tls-dir, see docs/deploy.md)"
	}
	leaf := s.tls.Leaf()
	d := "mutual TLS: certificate " + describeCert(leaf) + ", CA " + s.tls.caFile
	if s.auth != nil && len(s.auth.tokens) > 0 {
		d += fmt.Sprintf(", %d bearer tokens accepted", len(s.auth.tokens))
	}
	return d
}

// LogMode logs Describe at the level it deserves: a warning for plaintext.
func (s *Setup) LogMode(log *slog.Logger, who string) {
	if s.Secure() {
		log.Info(who+": "+s.Describe(), "tls", true)
		return
	}
	log.Warn(who+": "+s.Describe(), "tls", false)
}

// Authorizer is who-may-call-what (nil: everyone may call everything).
func (s *Setup) Authorizer() *Authorizer {
	if s == nil {
		return nil
	}
	return s.auth
}

// ServerOptions are the coordinator gRPC server's: TLS requiring a client
// certificate, the caller checks, and the message bounds.
func (s *Setup) ServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.MaxSendMsgSize(MaxReplyBytes)}
	if s == nil {
		return opts
	}
	if s.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.tls.ServerTLS(false))))
	}
	if s.auth != nil {
		opts = append(opts, grpc.ChainUnaryInterceptor(s.auth.UnaryInterceptor()), grpc.ChainStreamInterceptor(s.auth.StreamInterceptor()))
	}
	return opts
}

// DialOptions are a coordinator client's: TLS to a server whose
// certificate has role coordinator, the bearer token, the message bounds.
func (s *Setup) DialOptions() []grpc.DialOption {
	opts := []grpc.DialOption{grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxReplyBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes))}
	if s == nil || s.tls == nil {
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(s.tls.ClientTLS(RoleCoordinator))))
	}
	if s != nil && s.token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCreds{token: s.token, secure: s.tls != nil}))
	}
	return opts
}

// EtcdTLS is the etcd client's configuration (nil: plaintext): the
// server's certificate must chain to the CA, and this process's
// certificate is presented for etcd's --client-cert-auth.
func (s *Setup) EtcdTLS() *tls.Config {
	if !s.Secure() {
		return nil
	}
	return s.tls.ClientTLS()
}

// PeerTLS is the data plane's configuration (nil: plaintext): see
// Material.PeerTLS.
func (s *Setup) PeerTLS() *tls.Config {
	if !s.Secure() {
		return nil
	}
	return s.tls.PeerTLS()
}

// The HTTP paths served to anyone: Kubernetes' probes present no
// credentials.
const (
	HealthzPath = "/healthz"
	ReadyzPath  = "/readyz"
)

// HTTPListener secures an HTTP server's listener: with TLS it serves
// HTTPS, client certificates verified when presented but not required (a
// prober presents none; HTTPGuard decides per path).
func (s *Setup) HTTPListener(lis net.Listener) net.Listener {
	if !s.Secure() {
		return lis
	}
	return tls.NewListener(lis, s.tls.ServerTLS(true))
}

// HTTPGuard wraps h, when any credentials are configured, so that every
// path but /healthz and /readyz needs a bearer token or a client
// certificate of role admin, viewer or coordinator.
func (s *Setup) HTTPGuard(h http.Handler) http.Handler {
	if s == nil || s.auth == nil {
		return h
	}
	return s.auth.HTTPGuard(h, HealthzPath, ReadyzPath)
}

// Files returns the certificate, key and CA files in use ("" each when
// plaintext): the embedded etcd serves with them.
func (s *Setup) Files() (cert, key, ca string) {
	if !s.Secure() {
		return "", "", ""
	}
	return s.tls.certFile, s.tls.keyFile, s.tls.caFile
}

// HTTPClient is a client of a Loom HTTP server (the coordinator's JSON
// API): TLS to a coordinator's certificate and the bearer token.
func (s *Setup) HTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if s.Secure() {
		tr.TLSClientConfig = s.tls.ClientTLS(RoleCoordinator)
	}
	var rt http.RoundTripper = tr
	if s != nil && s.token != "" {
		rt = bearerRoundTripper{next: tr, token: s.token}
	}
	return &http.Client{Transport: rt}
}

// Scheme is "https" with TLS, else "http".
func (s *Setup) Scheme() string {
	if s.Secure() {
		return "https"
	}
	return "http"
}

type bearerRoundTripper struct {
	next  http.RoundTripper
	token string
}

// RoundTrip sends r with the bearer token.
func (b bearerRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
