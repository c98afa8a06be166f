package security

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/loomtrain/loom/api"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// pki is a CA directory from InitDir.
func pki(t *testing.T, o CertOptions) string {
	t.Helper()
	dir := t.TempDir()
	if err := InitDir(dir, DefaultComponents(), o, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

func setup(t *testing.T, c Config, log io.Writer, server bool) *Setup {
	t.Helper()
	var l *slog.Logger
	if log != nil {
		l = slog.New(slog.NewTextHandler(log, nil))
	}
	s, err := New(c, l, server)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// coordinatorServer serves an unimplemented Coordinator with s's options:
// a call that passes the checks ends Unimplemented.
func coordinatorServer(t *testing.T, s *Setup) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(s.ServerOptions()...)
	loomv1.RegisterCoordinatorServer(srv, loomv1.UnimplementedCoordinatorServer{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func call(t *testing.T, addr string, opts []grpc.DialOption, method string) error {
	t.Helper()
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := loomv1.NewCoordinatorClient(cc)
	switch method {
	case "Submit":
		_, err = c.Submit(ctx, &loomv1.SubmitRequest{SpecYaml: []byte("name: x\n")})
	case "Get":
		_, err = c.Get(ctx, &loomv1.GetRequest{Name: "x"})
	case "ReportSteps":
		_, err = c.ReportSteps(ctx, &loomv1.ReportStepsRequest{})
	default:
		t.Fatalf("method %s", method)
	}
	return err
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Errorf("got %v; want %v with %q", err, code, msg)
	}
}

func TestTokensPlaintext(t *testing.T) {
	dir := pki(t, CertOptions{})
	srv := setup(t, Config{AuthTokens: filepath.Join(dir, "auth-tokens")}, nil, true)
	addr := coordinatorServer(t, srv)
	client := func(tokenFile string) []grpc.DialOption {
		return setup(t, Config{TokenFile: tokenFile}, nil, false).DialOptions()
	}
	t.Setenv("LOOM_TOKEN", "")
	wantCode(t, call(t, addr, client(""), "Submit"), codes.Unauthenticated, "no bearer token")
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, []byte("0123456789abcdef0123\n"), 0o600)
	wantCode(t, call(t, addr, client(bad), "Submit"), codes.Unauthenticated, "not one this coordinator accepts")
	wantCode(t, call(t, addr, client(filepath.Join(dir, "viewer", "token")), "Submit"), codes.PermissionDenied, "needs role admin")
	wantCode(t, call(t, addr, client(filepath.Join(dir, "viewer", "token")), "Get"), codes.Unimplemented, "")
	wantCode(t, call(t, addr, client(filepath.Join(dir, "worker", "token")), "Submit"), codes.PermissionDenied, `token "worker" (role worker) may not call /loom.v1.Coordinator/Submit`)
	wantCode(t, call(t, addr, client(filepath.Join(dir, "admin", "token")), "Submit"), codes.Unimplemented, "")
	// $LOOM_TOKEN is the default token.
	tok, _ := os.ReadFile(filepath.Join(dir, "admin", "token"))
	t.Setenv("LOOM_TOKEN", strings.TrimSpace(string(tok)))
	wantCode(t, call(t, addr, client(""), "Submit"), codes.Unimplemented, "")
	if d := srv.Describe(); !strings.Contains(d, "plaintext") || !strings.Contains(d, "in the clear") {
		t.Errorf("Describe: %q", d)
	}
}

func TestMutualTLSRoles(t *testing.T) {
	dir := pki(t, CertOptions{})
	var log syncBuffer
	srv := setup(t, Config{Dir: filepath.Join(dir, "coordinator")}, &log, true)
	addr := coordinatorServer(t, srv)
	as := func(comp string) []grpc.DialOption {
		return setup(t, Config{Dir: filepath.Join(dir, comp)}, nil, false).DialOptions()
	}
	wantCode(t, call(t, addr, as("admin"), "Submit"), codes.Unimplemented, "")
	wantCode(t, call(t, addr, as("viewer"), "Submit"), codes.PermissionDenied, `certificate "viewer" (role viewer) may not call /loom.v1.Coordinator/Submit; it needs role admin`)
	wantCode(t, call(t, addr, as("worker"), "Submit"), codes.PermissionDenied, "needs role admin")
	wantCode(t, call(t, addr, as("worker"), "ReportSteps"), codes.Unimplemented, "")
	wantCode(t, call(t, addr, as("admin"), "ReportSteps"), codes.PermissionDenied, "needs role worker")
	// The etcd certificate carries no role.
	wantCode(t, call(t, addr, as("etcd"), "Get"), codes.Unauthenticated, "names no role")
	// A plaintext client does not get through the handshake.
	err := call(t, addr, []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, "Get")
	wantCode(t, err, codes.Unavailable, "")

	// A server certificate without role coordinator is refused by clients:
	// a worker's certificate cannot pose as the coordinator.
	fake := coordinatorServer(t, setup(t, Config{Dir: filepath.Join(dir, "worker")}, nil, true))
	wantCode(t, call(t, fake, as("admin"), "Get"), codes.Unavailable, "want role coordinator")
}

func TestWrongCA(t *testing.T) {
	a, b := pki(t, CertOptions{}), pki(t, CertOptions{})
	var log syncBuffer
	addr := coordinatorServer(t, setup(t, Config{Dir: filepath.Join(a, "coordinator")}, &log, true))
	// The client trusts another CA: the server's certificate is refused.
	mixed := Config{CertFile: filepath.Join(a, "admin", DirCert), KeyFile: filepath.Join(a, "admin", DirKey), CAFile: filepath.Join(b, DirCA)}
	err := call(t, addr, setup(t, mixed, nil, false).DialOptions(), "Get")
	wantCode(t, err, codes.Unavailable, "certificate signed by unknown authority")
	// The client's certificate is of another CA: the server refuses it and
	// logs who and why.
	other := Config{CertFile: filepath.Join(b, "admin", DirCert), KeyFile: filepath.Join(b, "admin", DirKey), CAFile: filepath.Join(a, DirCA)}
	err = call(t, addr, setup(t, other, nil, false).DialOptions(), "Get")
	if status.Code(err) != codes.Unavailable {
		t.Errorf("client of another CA: %v", err)
	}
	waitLog(t, &log, "certificate signed by unknown authority", `certificate \"admin\"`, "remote=127.0.0.1:")
}

func waitLog(t *testing.T, log *syncBuffer, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(log.String(), w)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q:\n%s", want, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestExpiredCertificate(t *testing.T) {
	dir := pki(t, CertOptions{})
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := CertOptions{NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour}
	expired := t.TempDir()
	for _, c := range []Component{{Name: "coordinator", Role: RoleCoordinator, Server: true}, {Name: "admin", Role: RoleAdmin}} {
		if _, err := ca.WriteComponent(expired, c, old); err != nil {
			t.Fatal(err)
		}
	}
	// An expired server certificate: the client says so.
	addr := coordinatorServer(t, setup(t, Config{Dir: filepath.Join(expired, "coordinator")}, nil, true))
	err = call(t, addr, setup(t, Config{Dir: filepath.Join(dir, "admin")}, nil, false).DialOptions(), "Get")
	wantCode(t, err, codes.Unavailable, "certificate has expired")
	// An expired client certificate: the server refuses and logs it.
	var log syncBuffer
	addr = coordinatorServer(t, setup(t, Config{Dir: filepath.Join(dir, "coordinator")}, &log, true))
	err = call(t, addr, setup(t, Config{Dir: filepath.Join(expired, "admin")}, nil, false).DialOptions(), "Get")
	if status.Code(err) != codes.Unavailable {
		t.Errorf("expired client certificate: %v", err)
	}
	waitLog(t, &log, "certificate has expired", `certificate \"admin\" (role admin`)
}

func TestOversizedMessage(t *testing.T) {
	addr := coordinatorServer(t, Plaintext())
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	big := bytes.Repeat([]byte("# padding\n"), (MaxMessageBytes+1<<20)/10)
	_, err = loomv1.NewCoordinatorClient(cc).Submit(ctx, &loomv1.SubmitRequest{SpecYaml: big})
	wantCode(t, err, codes.ResourceExhausted, "received message larger than max")
	// Loom's own client refuses before sending.
	cc2, _ := grpc.NewClient(addr, Plaintext().DialOptions()...)
	defer cc2.Close()
	_, err = loomv1.NewCoordinatorClient(cc2).Submit(ctx, &loomv1.SubmitRequest{SpecYaml: big})
	wantCode(t, err, codes.ResourceExhausted, "trying to send message larger than max")
}

// The data plane's configuration, as the tcp bulk link uses it: both ends
// need a worker certificate of the CA, and the dialler checks the host.
func TestPeerTLS(t *testing.T) {
	dir := pki(t, CertOptions{})
	peer := func(comp string) *tls.Config {
		return setup(t, Config{Dir: filepath.Join(dir, comp)}, nil, false).PeerTLS()
	}
	handshake := func(server, client *tls.Config, dial string) (serverErr, clientErr error) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer lis.Close()
		done := make(chan error, 1)
		go func() {
			c, err := lis.Accept()
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			s := tls.Server(c, server)
			err = s.HandshakeContext(context.Background())
			if err == nil {
				_, err = s.Write([]byte("x"))
			}
			done <- err
		}()
		_, port, _ := net.SplitHostPort(lis.Addr().String())
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cl := tls.Client(c, WithServerName(client, net.JoinHostPort(dial, port)))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		clientErr = cl.Handshake()
		if clientErr == nil {
			var b [1]byte
			_, clientErr = cl.Read(b[:])
		}
		return <-done, clientErr
	}
	if se, ce := handshake(peer("worker"), peer("worker"), "127.0.0.1"); se != nil || ce != nil {
		t.Fatalf("worker to worker: server %v, client %v", se, ce)
	}
	// The certificate is not for the host dialled.
	if _, ce := handshake(peer("worker"), peer("worker"), "10.99.0.1"); ce == nil || !strings.Contains(ce.Error(), "10.99.0.1") {
		t.Errorf("wrong host: %v", ce)
	}
	// An admin's certificate may not exchange tensors.
	if se, _ := handshake(peer("worker"), peer("admin"), "127.0.0.1"); se == nil || !strings.Contains(se.Error(), "needs role worker") {
		t.Errorf("admin as a peer: server %v", se)
	}
}

func TestCertificateReload(t *testing.T) {
	dir := pki(t, CertOptions{})
	m, err := LoadMaterial(Config{Dir: filepath.Join(dir, "worker")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m.now = func() time.Time { return now }
	first := m.Leaf().SerialNumber
	ca, _ := LoadCA(dir)
	if _, err := ca.WriteComponent(dir, Component{Name: "worker", Role: RoleWorker, Server: true}, CertOptions{}); err != nil {
		t.Fatal(err)
	}
	if m.Leaf().SerialNumber.Cmp(first) != 0 {
		t.Fatal("reloaded before a second had passed")
	}
	now = now.Add(2 * time.Second)
	if m.Leaf().SerialNumber.Cmp(first) == 0 {
		t.Fatal("the rewritten certificate was not reloaded")
	}
	// A broken rewrite keeps the previous certificate.
	os.WriteFile(filepath.Join(dir, "worker", DirCert), []byte("junk"), 0o644)
	now = now.Add(2 * time.Second)
	if c, err := m.Certificate(); err != nil || c == nil {
		t.Fatalf("after a broken rewrite: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	err := Config{Dir: dir}.Validate()
	for _, want := range []string{"--tls-cert " + filepath.Join(dir, DirCert), "--tls-key", "--tls-ca"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want %q", err, want)
		}
	}
	if err := (Config{CertFile: "x.crt"}).Validate(); err == nil || !strings.Contains(err.Error(), "--tls-key: not set") {
		t.Errorf("cert without key: %v", err)
	}
	bad := filepath.Join(dir, "tokens")
	os.WriteFile(bad, []byte("short admin\n0123456789abcdef0123 root\nonly\n"), 0o600)
	_, err = ParseTokens(bad)
	for _, want := range []string{"line 1: token of 5 characters", `line 2: role "root"`, "line 3: want"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseTokens: %v; want %q", err, want)
		}
	}
	if err := InitDir(t.TempDir(), nil, CertOptions{}, false); err != nil {
		t.Fatal(err)
	}
	d := pki(t, CertOptions{})
	if err := InitDir(d, nil, CertOptions{}, false); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("InitDir over a CA: %v", err)
	}
}

func TestRoots(t *testing.T) {
	base := t.TempDir()
	data, ckpt, outside := filepath.Join(base, "data"), filepath.Join(base, "ckpt"), filepath.Join(base, "outside")
	for _, d := range []string{data, ckpt, outside} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(data, "a.bin"), nil, 0o644)
	os.WriteFile(filepath.Join(outside, "secret.bin"), nil, 0o644)
	// A link inside the root that points out of it.
	os.Symlink(outside, filepath.Join(data, "escape"))
	r := Roots{Data: data, Checkpoint: ckpt}
	spec := api.DefaultSpec()
	spec.Data.Path = filepath.Join(data, "a.bin")
	spec.Checkpoint.Dir = filepath.Join(ckpt, "new", "dir")
	if err := r.CheckJob(spec, filepath.Join(ckpt, "job", "step-00000010")); err != nil {
		t.Fatalf("paths inside the roots: %v", err)
	}
	spec.Data.Path = ""
	spec.Data.Sources = []api.DataSource{{Path: filepath.Join(data, "a.bin"), Weight: 1}, {Path: data + "/../outside/secret.bin", Weight: 1}}
	spec.Data.Validation.Path = filepath.Join(data, "escape", "secret.bin")
	spec.Checkpoint.Dir = "/etc/loom-ckpt"
	err := r.CheckJob(spec, "/var/lib/other")
	var pe *PathError
	if !errors.As(err, &pe) {
		t.Fatalf("escaping paths: %v", err)
	}
	for _, want := range []string{
		"data.sources[1].path: " + data + "/../outside/secret.bin (resolves to " + filepath.Join(outside, "secret.bin") + ") is outside --data-root " + data,
		"data.validation.path: " + filepath.Join(data, "escape", "secret.bin") + " (resolves to " + filepath.Join(outside, "secret.bin") + ")",
		"checkpoint.dir: /etc/loom-ckpt is outside --checkpoint-root " + ckpt,
		"resume: /var/lib/other is outside --checkpoint-root",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "data.sources[0]") {
		t.Errorf("a path inside the root was refused:\n%v", err)
	}
	// A sibling whose name starts with the root's is not inside it.
	spec = api.DefaultSpec()
	spec.Data.Path = data + "2/x.bin"
	spec.Checkpoint.Dir = ckpt
	if err := r.CheckJob(spec, "latest"); err == nil || !strings.Contains(err.Error(), "data.path") {
		t.Errorf("sibling directory: %v", err)
	}
	if err := (Roots{}).CheckJob(spec, ""); err != nil {
		t.Errorf("no roots: %v", err)
	}
}

var _ credentials.PerRPCCredentials = tokenCreds{}
