package security

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The files of a TLS directory: the layout of a Kubernetes TLS secret
// (kubernetes.io/tls plus ca.crt), which `loom certs init` writes per
// component.
const (
	DirCert = "tls.crt"
	DirKey  = "tls.key"
	DirCA   = "ca.crt"
)

// Config is what a process is told about its TLS material and
// credentials, usually by flags (RegisterFlags). The zero value is
// plaintext without tokens.
type Config struct {
	// Dir holds tls.crt, tls.key and ca.crt; the three file fields
	// override its files one by one.
	Dir string
	// CertFile and KeyFile are this process's certificate (PEM, leaf
	// first, intermediates after) and private key.
	CertFile, KeyFile string
	// CAFile is the PEM bundle of certificate authorities trusted for
	// peers: servers' certificates and clients'.
	CAFile string
	// TokenFile holds the bearer token this process presents to the
	// coordinator (one line); "" with $LOOM_TOKEN set takes that.
	TokenFile string
	// AuthTokens, on a coordinator, lists the bearer tokens it accepts:
	// lines of "TOKEN ROLE [NAME]" (ParseTokens).
	AuthTokens string
}

// RegisterFlags binds the TLS and token flags to c. server adds
// --auth-tokens, which only a coordinator takes.
func (c *Config) RegisterFlags(fs *flag.FlagSet, server bool) {
	fs.StringVar(&c.Dir, "tls-dir", c.Dir, "`DIR` holding tls.crt, tls.key and ca.crt (as `loom certs init` writes per component, or a mounted Kubernetes TLS secret): mutual TLS on every connection")
	fs.StringVar(&c.CertFile, "tls-cert", c.CertFile, "this process's certificate `FILE` (PEM); overrides --tls-dir's tls.crt")
	fs.StringVar(&c.KeyFile, "tls-key", c.KeyFile, "this process's private key `FILE` (PEM); overrides --tls-dir's tls.key")
	fs.StringVar(&c.CAFile, "tls-ca", c.CAFile, "the certificate authorities `FILE` (PEM) peers' certificates must chain to; overrides --tls-dir's ca.crt")
	fs.StringVar(&c.TokenFile, "token-file", c.TokenFile, "`FILE` holding the bearer token presented to the coordinator (default $LOOM_TOKEN)")
	if server {
		fs.StringVar(&c.AuthTokens, "auth-tokens", c.AuthTokens, "`FILE` of accepted bearer tokens, one \"TOKEN ROLE [NAME]\" a line (roles: admin, viewer, worker); with TLS, client certificates' roles are accepted too")
	}
}

// files returns the certificate, key and CA paths after --tls-dir.
func (c Config) files() (cert, key, ca string) {
	cert, key, ca = c.CertFile, c.KeyFile, c.CAFile
	if c.Dir != "" {
		if cert == "" {
			cert = filepath.Join(c.Dir, DirCert)
		}
		if key == "" {
			key = filepath.Join(c.Dir, DirKey)
		}
		if ca == "" {
			ca = filepath.Join(c.Dir, DirCA)
		}
	}
	return cert, key, ca
}

// TLSEnabled reports whether any TLS flag was given.
func (c Config) TLSEnabled() bool {
	return c.Dir != "" || c.CertFile != "" || c.KeyFile != "" || c.CAFile != ""
}

// Validate reports every missing or unreadable file at once, naming the
// flag that gave it.
func (c Config) Validate() error {
	var errs []error
	if c.TLSEnabled() {
		cert, key, ca := c.files()
		for _, f := range []struct{ flag, dirFile, path string }{
			{"--tls-cert", DirCert, cert}, {"--tls-key", DirKey, key}, {"--tls-ca", DirCA, ca},
		} {
			if f.path == "" {
				errs = append(errs, fmt.Errorf("%s: not set (give it, or --tls-dir DIR holding %s)", f.flag, f.dirFile))
				continue
			}
			if _, err := os.Stat(f.path); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", f.flag, f.path, err))
			}
		}
	}
	if c.TokenFile != "" {
		if _, err := os.Stat(c.TokenFile); err != nil {
			errs = append(errs, fmt.Errorf("--token-file: %w", err))
		}
	}
	if c.AuthTokens != "" {
		if _, err := os.Stat(c.AuthTokens); err != nil {
			errs = append(errs, fmt.Errorf("--auth-tokens: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Token returns the bearer token to present: TokenFile's first line, else
// $LOOM_TOKEN, else "".
func (c Config) Token() (string, error) {
	if c.TokenFile == "" {
		return strings.TrimSpace(os.Getenv("LOOM_TOKEN")), nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", fmt.Errorf("--token-file %s: empty; write the token on its first line", c.TokenFile)
	}
	return tok, nil
}
