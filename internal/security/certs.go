package security

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DefaultValidity is how long `loom certs init` certificates are valid.
const DefaultValidity = 365 * 24 * time.Hour

// Component is one certificate `loom certs init` issues: the directory it
// goes in under the CA's, its role and whether it serves TLS.
type Component struct {
	Name   string // directory and common name, e.g. "worker"
	Role   string // OU; "" for none (etcd)
	Server bool   // serverAuth as well as clientAuth, with the host names
	// Dir is where WriteComponent writes, under its dir (default Name).
	Dir string
}

// DefaultComponents are what `loom certs init` issues.
func DefaultComponents() []Component {
	return []Component{
		{Name: "coordinator", Role: RoleCoordinator, Server: true},
		{Name: "worker", Role: RoleWorker, Server: true},
		{Name: "etcd", Server: true},
		{Name: "admin", Role: RoleAdmin},
		{Name: "viewer", Role: RoleViewer},
	}
}

// CertOptions says what certificates to issue.
type CertOptions struct {
	// Hosts are the DNS names and IP addresses server certificates are
	// valid for (default: localhost, 127.0.0.1, ::1 and this hostname).
	// A name may be a wildcard ("*.loom-worker.default.svc").
	Hosts []string
	// Validity is how long from NotBefore (default DefaultValidity).
	Validity time.Duration
	// NotBefore is when certificates start being valid (default: now less
	// five minutes, for clock skew). Tests issue expired ones with it.
	NotBefore time.Time
}

func (o CertOptions) withDefaults() CertOptions {
	if len(o.Hosts) == 0 {
		o.Hosts = []string{"localhost", "127.0.0.1", "::1"}
		if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
			o.Hosts = append(o.Hosts, h)
		}
	}
	if o.Validity <= 0 {
		o.Validity = DefaultValidity
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-5 * time.Minute)
	}
	return o
}

// CA is a certificate authority that issues certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte
}

// NewCA makes a self-signed development CA.
func NewCA(name string, o CertOptions) (*CA, error) {
	o = o.withDefaults()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Loom"}},
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotBefore.Add(o.Validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// LoadCA reads DIR/ca.crt and DIR/ca.key.
func LoadCA(dir string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, DirCA), filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, fmt.Errorf("load the CA from %s: %w (make one with `loom certs init %s`)", dir, err, dir)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load the CA from %s: ca.key is not an ECDSA key", dir)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, DirCA))
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: b}, nil
}

// Issue makes a certificate for c signed by ca; it returns the
// certificate's and the key's PEM.
func (ca *CA) Issue(c Component, o CertOptions) (certPEM, keyPEM []byte, err error) {
	o = o.withDefaults()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: c.Name, Organization: []string{"Loom"}},
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotBefore.Add(o.Validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if c.Role != "" {
		tmpl.Subject.OrganizationalUnit = []string{c.Role}
	}
	if c.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, h := range o.Hosts {
			if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}

// WriteComponent issues c's certificate into dir/c.Name (or c.Dir) as tls.crt,
// tls.key (mode 0600) and ca.crt: a --tls-dir.
func (ca *CA) WriteComponent(dir string, c Component, o CertOptions) (string, error) {
	certPEM, keyPEM, err := ca.Issue(c, o)
	if err != nil {
		return "", fmt.Errorf("issue %s: %w", c.Name, err)
	}
	out := filepath.Join(dir, c.Name)
	if c.Dir != "" {
		out = filepath.Join(dir, c.Dir)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	for _, f := range []struct {
		name string
		b    []byte
		mode os.FileMode
	}{{DirCert, certPEM, 0o644}, {DirKey, keyPEM, 0o600}, {DirCA, ca.PEM, 0o644}} {
		if err := writeFile(filepath.Join(out, f.name), f.b, f.mode); err != nil {
			return "", err
		}
	}
	return out, nil
}

// InitDir writes a new development CA into dir (ca.crt, ca.key), a
// --tls-dir per component, and bearer tokens: dir/auth-tokens for the
// coordinator's --auth-tokens and dir/NAME/token for each role's client.
// It refuses a dir that already holds a CA unless force is set.
func InitDir(dir string, comps []Component, o CertOptions, force bool) error {
	if _, err := os.Stat(filepath.Join(dir, DirCA)); err == nil && !force {
		return fmt.Errorf("%s already holds a CA (ca.crt); pass --force to replace it and every certificate it issued", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ca, err := NewCA("Loom development CA", o)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, DirCA), ca.PEM, 0o644); err != nil {
		return err
	}
	var tokens strings.Builder
	tokens.WriteString("# Bearer tokens `loom coordinator --auth-tokens` accepts: TOKEN ROLE NAME.\n")
	for _, c := range comps {
		out, err := ca.WriteComponent(dir, c, o)
		if err != nil {
			return err
		}
		if c.Role == RoleAdmin || c.Role == RoleViewer || c.Role == RoleWorker {
			tok := randomToken()
			fmt.Fprintf(&tokens, "%s %s %s\n", tok, c.Role, c.Name)
			if err := writeFile(filepath.Join(out, "token"), []byte(tok+"\n"), 0o600); err != nil {
				return err
			}
		}
	}
	return writeFile(filepath.Join(dir, "auth-tokens"), []byte(tokens.String()), 0o600)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(errors.New("crypto/rand failed")) // crypto/rand does not fail on Linux
	}
	return n
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writeFile writes b to path with mode, through a temporary file renamed
// into place (a reader never sees half a key).
func writeFile(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
