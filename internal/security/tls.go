package security

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Roles a certificate (in its subject's OrganizationalUnit) or a bearer
// token carries.
const (
	// RoleAdmin submits, stops and reads jobs.
	RoleAdmin = "admin"
	// RoleViewer reads jobs (status, watch, the dashboard).
	RoleViewer = "viewer"
	// RoleWorker runs ranks: it reports steps to the coordinator and
	// exchanges tensors with other workers.
	RoleWorker = "worker"
	// RoleCoordinator serves the control plane (and reads it).
	RoleCoordinator = "coordinator"
)

// knownRole reports whether r is one of the roles above.
func knownRole(r string) bool {
	switch r {
	case RoleAdmin, RoleViewer, RoleWorker, RoleCoordinator:
		return true
	}
	return false
}

// CertRoles returns the roles c's subject names in OrganizationalUnit.
func CertRoles(c *x509.Certificate) []string {
	var roles []string
	for _, ou := range c.Subject.OrganizationalUnit {
		if knownRole(ou) {
			roles = append(roles, ou)
		}
	}
	return roles
}

// describeCert names a certificate for an error: its common name, roles
// and issuer.
func describeCert(c *x509.Certificate) string {
	roles := CertRoles(c)
	r := "no role"
	if len(roles) > 0 {
		r = "role " + strings.Join(roles, ",")
	}
	return fmt.Sprintf("%q (%s, issued by %q)", c.Subject.CommonName, r, c.Issuer.CommonName)
}

// reloadEvery is how often a certificate's files are checked for changes.
const reloadEvery = time.Second

// Material is a process's TLS material: its certificate (reloaded when
// the files change, so a rotated certificate takes effect without a
// restart) and the CA pool (read once; a new CA needs a restart). Safe
// for concurrent use.
type Material struct {
	certFile, keyFile, caFile string
	pool                      *x509.CertPool
	log                       *slog.Logger
	now                       func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	leaf    *x509.Certificate
	stamp   string // the files' sizes and times when cert was read
	checked time.Time
}

// LoadMaterial reads c's certificate, key and CA. It returns nil, nil when
// c configures no TLS. log receives reloads and refused handshakes (nil:
// discarded).
func LoadMaterial(c Config, log *slog.Logger) (*Material, error) {
	if !c.TLSEnabled() {
		return nil, nil
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cert, key, ca := c.files()
	m := &Material{certFile: cert, keyFile: key, caFile: ca, log: log, now: time.Now}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("--tls-ca: %w", err)
	}
	m.pool = x509.NewCertPool()
	if !m.pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", ca)
	}
	if _, err := m.Certificate(); err != nil {
		return nil, err
	}
	if d := m.leaf.NotAfter.Sub(m.now()); d < 7*24*time.Hour {
		log.Warn("tls: this process's certificate expires soon; renew it (the files are reloaded when they change)",
			"cert", cert, "not_after", m.leaf.NotAfter.Format(time.RFC3339))
	}
	return m, nil
}

// stampOf describes the files' sizes and modification times.
func stampOf(files ...string) (string, error) {
	var b strings.Builder
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s:%d:%d;", f, st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), nil
}

// Certificate returns this process's certificate, reading its files again
// when they changed (checked at most once a second). A reload that fails
// keeps the previous certificate and is logged.
func (m *Material) Certificate() (*tls.Certificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if m.cert != nil && now.Sub(m.checked) < reloadEvery {
		return m.cert, nil
	}
	m.checked = now
	stamp, err := stampOf(m.certFile, m.keyFile)
	if err == nil && stamp == m.stamp {
		return m.cert, nil
	}
	if err == nil {
		var c tls.Certificate
		c, err = tls.LoadX509KeyPair(m.certFile, m.keyFile)
		if err == nil {
			m.cert, m.leaf, m.stamp = &c, c.Leaf, stamp
			if m.leaf == nil {
				m.leaf, _ = x509.ParseCertificate(c.Certificate[0])
			}
			m.log.Info("tls: certificate loaded", "cert", m.certFile, "subject", describeCert(m.leaf),
				"not_after", m.leaf.NotAfter.Format(time.RFC3339))
			return m.cert, nil
		}
	}
	err = fmt.Errorf("--tls-cert %s / --tls-key %s: %w", m.certFile, m.keyFile, err)
	if m.cert == nil {
		return nil, err
	}
	m.log.Error("tls: reloading the certificate failed; keeping the previous one", "err", err)
	return m.cert, nil
}

// Leaf is this process's current certificate, parsed.
func (m *Material) Leaf() *x509.Certificate {
	if _, err := m.Certificate(); err != nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leaf
}

// Pool is the CA pool peers' certificates must chain to.
func (m *Material) Pool() *x509.CertPool { return m.pool }

// verifyChain checks that certs (leaf first) chain to the CA for usage and
// carry one of roles (none given: any).
func (m *Material) verifyChain(certs []*x509.Certificate, usage x509.ExtKeyUsage, dnsName string, roles []string) error {
	if len(certs) == 0 {
		return errors.New("no certificate presented")
	}
	opts := x509.VerifyOptions{Roots: m.pool, Intermediates: x509.NewCertPool(), CurrentTime: m.now(),
		KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: dnsName}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := certs[0].Verify(opts); err != nil {
		return fmt.Errorf("certificate %s: %w", describeCert(certs[0]), err)
	}
	if len(roles) > 0 && !slices.ContainsFunc(CertRoles(certs[0]), func(r string) bool { return slices.Contains(roles, r) }) {
		return fmt.Errorf("certificate %s: needs role %s here (its subject's OU); issue it with `loom certs init` or add the OU",
			describeCert(certs[0]), strings.Join(roles, " or "))
	}
	return nil
}

// ServerTLS is a server's side of mutual TLS: a client certificate signed
// by the CA is required (with one of roles, when given), checked by Loom
// itself so that a refusal is logged naming the remote address and what
// was wrong. optional accepts clients without a certificate (they must
// then authenticate otherwise: the HTTP server's probes and tokens).
func (m *Material) ServerTLS(optional bool, roles ...string) *tls.Config {
	base := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return m.Certificate() },
		ClientAuth:     tls.RequireAnyClientCert,
		NextProtos:     []string{"h2", "http/1.1"},
	}
	if optional {
		base.ClientAuth = tls.RequestClientCert
	}
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		remote := "?"
		if hello.Conn != nil {
			remote = hello.Conn.RemoteAddr().String()
		}
		c := base.Clone()
		c.GetConfigForClient = nil
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if optional && len(cs.PeerCertificates) == 0 {
				return nil
			}
			if err := m.verifyChain(cs.PeerCertificates, x509.ExtKeyUsageClientAuth, "", roles); err != nil {
				m.log.Warn("tls: refused a client", "remote", remote, "err", err)
				return err
			}
			return nil
		}
		return c, nil
	}
	return base
}

// ClientTLS is a client's side of mutual TLS: the server's certificate must
// chain to the CA and name the host dialled (crypto/tls checks it; set
// ServerName when the dialer does not), and this process presents its own.
// roles, when given, is what the server's certificate must carry.
func (m *Material) ClientTLS(roles ...string) *tls.Config {
	c := &tls.Config{
		MinVersion:           tls.VersionTLS12,
		RootCAs:              m.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return m.Certificate() },
	}
	if len(roles) > 0 {
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server presented no certificate")
			}
			if !slices.ContainsFunc(CertRoles(cs.PeerCertificates[0]), func(r string) bool { return slices.Contains(roles, r) }) {
				return fmt.Errorf("server %s: certificate %s: want role %s", cs.ServerName, describeCert(cs.PeerCertificates[0]), strings.Join(roles, " or "))
			}
			return nil
		}
	}
	return c
}

// PeerTLS is the data plane's configuration, for both ends of a worker's
// gRPC Peer streams and raw tcp bulk links: each side must present a
// certificate of the CA with role worker; a dialler sets ServerName to the
// peer's host (WithServerName).
func (m *Material) PeerTLS() *tls.Config {
	s := m.ServerTLS(false, RoleWorker)
	c := m.ClientTLS(RoleWorker)
	s.RootCAs = c.RootCAs
	s.GetClientCertificate = c.GetClientCertificate
	// Bulk streams: full-size records from the first byte (no slow start
	// of small records after an idle spell).
	s.DynamicRecordSizingDisabled = true
	// As a client (ServerName set by the dialler) the server's role is
	// checked here; as a server, the configuration GetConfigForClient
	// returns checks the client's instead.
	s.VerifyConnection = c.VerifyConnection
	return s
}

// WithServerName returns a copy of c for dialling addr (host:port): the
// host is what the peer's certificate must name.
func WithServerName(c *tls.Config, addr string) *tls.Config {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	c = c.Clone()
	c.ServerName = host
	return c
}
