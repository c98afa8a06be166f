package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/loomtrain/loom/internal/security"
)

func cmdCerts(ctx context.Context, env *cmdEnv, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(env.stdout, "Usage: loom certs COMMAND [flags]\n\nCommands:\n"+
			"  init DIR   make a development CA and a --tls-dir per component (coordinator, worker, etcd, admin, viewer), and bearer tokens\n"+
			"  issue DIR  issue one more certificate from DIR's CA (a host's worker, a user)\n")
		return nil
	}
	switch args[0] {
	case "init":
		return cmdCertsInit(env, args[1:])
	case "issue":
		return cmdCertsIssue(env, args[1:])
	}
	return fmt.Errorf("certs: unknown command %q (want init or issue)", args[0])
}

func hostsFlag(p *[]string) func(string) error {
	return func(s string) error {
		*p = splitComma(s)
		return nil
	}
}

func cmdCertsInit(env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "certs init", "DIR [--hosts H1,H2,...] [flags]\n\n"+
		"Writes a development certificate authority (DIR/ca.crt, DIR/ca.key) and, signed by it,\n"+
		"one directory per component holding tls.crt, tls.key and ca.crt, for --tls-dir:\n"+
		"  DIR/coordinator  role coordinator (server and client)\n"+
		"  DIR/worker       role worker (server and client: the data plane)\n"+
		"  DIR/etcd         etcd's server certificate (no role)\n"+
		"  DIR/admin        role admin: loom submit, stop, status\n"+
		"  DIR/viewer       role viewer: loom status, the dashboard, Prometheus\n"+
		"and bearer tokens: DIR/auth-tokens for `loom coordinator --auth-tokens`, DIR/NAME/token\n"+
		"for --token-file. Server certificates are valid for --hosts: every name or address\n"+
		"others dial (wildcards such as *.loom-worker.NS.svc work for DNS names). For\n"+
		"production, issue certificates from your own CA with the same roles (the subject's OU).")
	var hosts []string
	fs.Func("hosts", "comma-separated DNS `NAMES` and IP addresses server certificates are valid for (default: localhost, 127.0.0.1, ::1, this hostname)", hostsFlag(&hosts))
	validity := fs.Duration("validity", security.DefaultValidity, "how long the certificates are valid")
	force := fs.Bool("force", false, "replace a CA already in DIR (every certificate it issued stops being trusted)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return errors.New("certs init: need exactly one DIR")
	}
	o := security.CertOptions{Hosts: hosts, Validity: *validity}
	if err := security.InitDir(pos[0], security.DefaultComponents(), o, *force); err != nil {
		return fmt.Errorf("certs init: %w", err)
	}
	if len(hosts) == 0 {
		hosts = []string{"localhost", "127.0.0.1", "::1", "(this hostname)"}
	}
	fmt.Fprintf(env.stdout, "wrote a development CA and certificates to %s (valid until %s, server names %s)\n",
		pos[0], time.Now().Add(*validity).Format("2006-01-02"), strings.Join(hosts, ", "))
	for _, c := range security.DefaultComponents() {
		fmt.Fprintf(env.stdout, "  --tls-dir %s\n", filepath.Join(pos[0], c.Name))
	}
	fmt.Fprintf(env.stdout, "  --auth-tokens %s (coordinator); --token-file %s (a client)\n",
		filepath.Join(pos[0], "auth-tokens"), filepath.Join(pos[0], "admin", "token"))
	return nil
}

func cmdCertsIssue(env *cmdEnv, args []string) error {
	fs := newFlagSet(env, "certs issue", "DIR --name NAME --role ROLE [--hosts H1,...] [--out OUTDIR]\n\n"+
		"Issues one certificate from DIR's CA (made by `loom certs init DIR`) into OUTDIR\n"+
		"(default DIR/NAME) as tls.crt, tls.key and ca.crt.")
	name := fs.String("name", "", "the certificate's common `NAME` (and default directory)")
	role := fs.String("role", "", "`ROLE` (the subject's OU): admin, viewer, worker or coordinator; empty for none (etcd)")
	var hosts []string
	fs.Func("hosts", "comma-separated DNS `NAMES` and IP addresses, for a server certificate (worker, coordinator, etcd)", hostsFlag(&hosts))
	out := fs.String("out", "", "output `DIR` (default DIR/NAME)")
	validity := fs.Duration("validity", security.DefaultValidity, "how long the certificate is valid")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *name == "" {
		fs.Usage()
		return errors.New("certs issue: need DIR and --name")
	}
	switch *role {
	case "", security.RoleAdmin, security.RoleViewer, security.RoleWorker, security.RoleCoordinator:
	default:
		return fmt.Errorf("certs issue: --role %q: want admin, viewer, worker, coordinator or empty", *role)
	}
	ca, err := security.LoadCA(pos[0])
	if err != nil {
		return fmt.Errorf("certs issue: %w", err)
	}
	server := *role == "" || *role == security.RoleWorker || *role == security.RoleCoordinator
	dir, c := pos[0], security.Component{Name: *name, Role: *role, Server: server}
	if *out != "" {
		abs, err := filepath.Abs(*out)
		if err != nil {
			return fmt.Errorf("certs issue: --out: %w", err)
		}
		dir, c.Dir = filepath.Dir(abs), filepath.Base(abs)
	}
	got, err := ca.WriteComponent(dir, c, security.CertOptions{Hosts: hosts, Validity: *validity})
	if err != nil {
		return fmt.Errorf("certs issue: %w", err)
	}
	fmt.Fprintf(env.stdout, "wrote %s: --tls-dir %s\n", c.Name, got)
	return nil
}
