package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loomtrain/loom/internal/security"
)

// tlsProc is a loom subprocess of a test (TestMain makes the test binary act
// as loom).
type tlsProc struct {
	args []string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

func startTLSLoom(t *testing.T, args ...string) *tlsProc {
	t.Helper()
	p := &tlsProc{args: args, out: &lockedBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
		}
	})
	return p
}

// wait runs p to its end within timeout and returns its output.
func (p *tlsProc) wait(t *testing.T, timeout time.Duration) (string, error) {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return p.out.String(), err
	case <-time.After(timeout):
		t.Fatalf("loom %s: still running after %v:\n%s", strings.Join(p.args, " "), timeout, p.out.String())
	}
	return "", nil
}

// TestTLSCluster: a coordinator (embedded etcd over https with client
// certificates), two workers and `loom submit`, all with mutual TLS from
// `loom certs init`; the data plane's tcp bulk links inside TLS. Callers
// without the right role, plaintext callers and job specs whose paths
// escape the allowed directories are refused with what was wrong.
func TestTLSCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts coordinator and worker processes")
	}
	spec, tokens := fixture(t, "parallel: {dp: 2, transport: tcp}\n")
	root := filepath.Dir(spec)
	pki := t.TempDir()
	if _, _, err := loom(t, "certs", "init", pki); err != nil {
		t.Fatal(err)
	}
	tlsDir := func(c string) string { return "--tls-dir=" + filepath.Join(pki, c) }
	grpcAddr, httpAddr := closedAddr(t), closedAddr(t)
	coord := startTLSLoom(t, "coordinator", "--listen", grpcAddr, "--http", httpAddr, tlsDir("coordinator"),
		"--checkpoint-root", root, "--ttl", "3s")
	var ws []*tlsProc
	workerHTTP := closedAddr(t)
	for i := range 2 {
		args := []string{"worker", "--coordinator", grpcAddr, tlsDir("worker"), "--data-root", root, "--threads", "1", "--dial-timeout", "20s"}
		if i == 0 {
			args = append(args, "--http", workerHTTP)
		}
		ws = append(ws, startTLSLoom(t, args...))
	}
	dump := func() string {
		var b strings.Builder
		for _, p := range append([]*tlsProc{coord}, ws...) {
			b.WriteString("--- loom " + strings.Join(p.args, " ") + "\n" + p.out.String())
		}
		return b.String()
	}
	submit := func(args ...string) (string, error) {
		return startTLSLoom(t, append([]string{"submit", "--coordinator", grpcAddr}, args...)...).wait(t, 90*time.Second)
	}
	// The coordinator is up once its probe answers.
	ca := x509.NewCertPool()
	pem, _ := os.ReadFile(filepath.Join(pki, "ca.crt"))
	ca.AppendCertsFromPEM(pem)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca, ServerName: "127.0.0.1"}}}
	get := func(path string, c *http.Client) (int, string) {
		addr := httpAddr
		if p, ok := strings.CutPrefix(path, "worker:"); ok {
			addr, path = workerHTTP, p
		}
		resp, err := c.Get("https://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if code, _ := get(security.ReadyzPath, hc); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the coordinator's /readyz never answered 200:\n%s", dump())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body := get("/api/jobs", hc); code != http.StatusUnauthorized || !strings.Contains(body, "unauthenticated") {
		t.Errorf("dashboard API without credentials: %d %q; want 401 unauthenticated", code, body)
	}

	// Refused callers.
	out, err := submit(spec, tlsDir("viewer"))
	if err == nil || !strings.Contains(out, `permission denied: certificate "viewer" (role viewer) may not call /loom.v1.Coordinator/Submit; it needs role admin`) {
		t.Errorf("submit as viewer: %v\n%s", err, out)
	}
	out, err = submit(spec)
	if err == nil || !strings.Contains(out, "one side uses TLS and the other not") {
		t.Errorf("plaintext submit: %v\n%s", err, out)
	}
	// A checkpoint directory outside the coordinator's --checkpoint-root is
	// refused at submit.
	esc := filepath.Join(t.TempDir(), "escape.yaml")
	src, _ := os.ReadFile(spec)
	outside := t.TempDir()
	os.WriteFile(esc, []byte(strings.Replace(string(src), "checkpoint: {dir: "+filepath.Join(root, "ck"), "checkpoint: {dir: "+outside, 1)), 0o644)
	out, err = submit(esc, tlsDir("admin"))
	if err == nil || !strings.Contains(out, "checkpoint.dir: "+outside+" is outside --checkpoint-root "+root) {
		t.Errorf("checkpoint dir outside the root: %v\n%s", err, out)
	}

	// A spec larger than one etcd value may be is refused, naming the bound.
	big := filepath.Join(t.TempDir(), "big.yaml")
	os.WriteFile(big, append(append([]byte{}, src...), []byte(strings.Repeat("# padding padding padding padding\n", 40_000))...), 0o644)
	out, err = submit(big, tlsDir("admin"))
	if err == nil || !strings.Contains(out, "a job spec may be at most 1048576") {
		t.Errorf("oversized spec: %v\n%s", err, out)
	}

	// The job trains across both workers over mutual TLS.
	out, err = submit(spec, tlsDir("admin"))
	if err != nil || !strings.Contains(out, "SUCCEEDED") {
		t.Fatalf("submit as admin: %v\n%s\n%s", err, out, dump())
	}
	// loom top reads the dashboard API over HTTPS with the admin's
	// certificate.
	if out, err := startTLSLoom(t, "top", "--coordinator", grpcAddr, "--once", tlsDir("admin")).wait(t, 30*time.Second); err != nil || !regexp.MustCompile(`(?m)^\S*\bt\b`).MatchString(out) {
		t.Errorf("loom top over TLS: %v\n%s", err, out)
	} else {
		t.Logf("loom top --once over TLS:\n%s", out)
	}

	for i, w := range ws {
		if o := w.out.String(); !strings.Contains(o, "transport=tcp") || !strings.Contains(o, "mutual TLS") {
			t.Errorf("worker %d did not log a tcp link under mutual TLS:\n%s", i, o)
		}
	}

	// Token files outside the workers' --data-root: the coordinator lets
	// the job through (it has no --data-root), the workers refuse it.
	moved := filepath.Join(outside, "tok.bin")
	b, _ := os.ReadFile(tokens)
	os.WriteFile(moved, b, 0o644)
	if side, err := os.ReadFile(tokens + ".json"); err == nil {
		os.WriteFile(moved+".json", side, 0o644)
	}
	os.WriteFile(esc, []byte(strings.Replace(strings.Replace(string(src), tokens, moved, 1), "name: t\n", "name: t2\n", 1)), 0o644)
	out, err = submit(esc, tlsDir("admin"))
	if err == nil || !strings.Contains(out, "data.path: "+moved+" is outside --data-root "+root) {
		t.Errorf("data outside the workers' root: %v\n%s\n%s", err, out, dump())
	}
	// The viewer reads the dashboard API; probes need nothing.
	viewer, err := tls.LoadX509KeyPair(filepath.Join(pki, "viewer", "tls.crt"), filepath.Join(pki, "viewer", "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	vc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca, ServerName: "127.0.0.1", Certificates: []tls.Certificate{viewer}}}}
	if code, body := get("/api/jobs", vc); code != http.StatusOK || !strings.Contains(body, `"t"`) {
		t.Errorf("dashboard API as viewer: %d %q", code, body)
	}
	if code, _ := get(security.HealthzPath, hc); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	// A worker's probes: ready once registered; its metrics need a role.
	if code, body := get("worker:"+security.ReadyzPath, hc); code != http.StatusOK || !strings.Contains(body, "ready") {
		t.Errorf("worker /readyz: %d %q", code, body)
	}
	if code, _ := get("worker:/metrics", hc); code != http.StatusUnauthorized {
		t.Errorf("worker /metrics without a certificate: %d; want 401", code)
	}
	if code, body := get("worker:/metrics", vc); code != http.StatusOK || !strings.Contains(body, "go_goroutines") {
		t.Errorf("worker /metrics as viewer: %d", code)
	}
	if !strings.Contains(coord.out.String(), "mutual TLS") {
		t.Errorf("the coordinator did not log its TLS set-up:\n%s", coord.out.String())
	}
}
