package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// EtcdOptions configures an embedded etcd server.
type EtcdOptions struct {
	// Dir holds etcd's data; "" makes a temporary directory that Close
	// removes.
	Dir string
	// ClientAddr is the host:port clients connect to (default
	// "127.0.0.1:0": a free loopback port).
	ClientAddr string
	// Advertise is the client URL clients (workers, standbys) are told:
	// http://HOST:PORT, HOST:PORT, or HOST alone for ClientAddr's port
	// (default: ClientAddr, which then must have a host others can dial).
	Advertise string
	// LogOutput is "stderr", "stdout", "discard" or a file path (default
	// "stderr"); etcd logs only errors.
	LogOutput string
	// TLSCertFile, TLSKeyFile and TLSCAFile, when set, serve the client
	// URLs over https with client certificates required (signed by the
	// CA): etcd's --cert-file, --key-file, --trusted-ca-file and
	// --client-cert-auth.
	TLSCertFile, TLSKeyFile, TLSCAFile string
	// MaxRequestBytes bounds one request, and so one value (etcd's
	// --max-request-bytes; default etcd's, 1.5 MiB).
	MaxRequestBytes uint
}

// EmbeddedEtcd is a single-member etcd server running in this process.
type EmbeddedEtcd struct {
	etcd    *embed.Etcd
	dir     string
	tempDir bool
	// Endpoints are the client URLs.
	Endpoints []string
}

// StartEtcd starts a single-member etcd server on loopback and waits until
// it serves, or ctx is done.
func StartEtcd(ctx context.Context, opts EtcdOptions) (*EmbeddedEtcd, error) {
	dir, temp := opts.Dir, false
	if dir == "" {
		d, err := os.MkdirTemp("", "loom-etcd-")
		if err != nil {
			return nil, fmt.Errorf("embedded etcd: make data directory: %w", err)
		}
		dir, temp = d, true
	}
	var lastErr error
	// Free ports are picked by binding and releasing them; another process
	// may take one in between, so a failed start is retried on new ports.
	for attempt := 0; attempt < 3; attempt++ {
		e, err := startEtcdOnce(ctx, dir, opts)
		if err == nil {
			e.tempDir = temp
			return e, nil
		}
		lastErr = err
		if _, port, _ := net.SplitHostPort(opts.ClientAddr); ctx.Err() != nil || opts.ClientAddr != "" && port != "0" {
			break
		}
	}
	if temp {
		_ = os.RemoveAll(dir)
	}
	return nil, lastErr
}

func startEtcdOnce(ctx context.Context, dir string, opts EtcdOptions) (*EmbeddedEtcd, error) {
	clientAddr := opts.ClientAddr
	if clientAddr == "" {
		clientAddr = "127.0.0.1:0"
	}
	if host, port, err := net.SplitHostPort(clientAddr); err == nil && port == "0" {
		p, err := freePortOn(host)
		if err != nil {
			return nil, err
		}
		clientAddr = net.JoinHostPort(host, strconv.Itoa(p))
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	scheme := "http"
	if opts.TLSCertFile != "" {
		scheme = "https"
	}
	curl, err := url.Parse(scheme + "://" + clientAddr)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: client address %q: %w", clientAddr, err)
	}
	aurl, err := advertiseURL(opts.Advertise, curl)
	if err != nil {
		return nil, err
	}
	purl, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg := embed.NewConfig()
	cfg.Name = "loom"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*aurl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	if opts.TLSCertFile != "" {
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: opts.TLSCertFile, KeyFile: opts.TLSKeyFile,
			TrustedCAFile: opts.TLSCAFile, ClientCertAuth: true}
	}
	if opts.MaxRequestBytes > 0 {
		cfg.MaxRequestBytes = opts.MaxRequestBytes
	}
	switch out := opts.LogOutput; out {
	case "":
		cfg.LogOutputs = []string{"stderr"}
	case "discard":
		cfg.LogOutputs = []string{os.DevNull}
	default:
		cfg.LogOutputs = []string{out}
	}
	// Progress keys are rewritten often; keep history short.
	cfg.AutoCompactionMode = "revision"
	cfg.AutoCompactionRetention = "1000"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd on %s (data %s): %w", clientAddr, dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd on %s: %w", clientAddr, err)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd on %s: not ready: %w", clientAddr, ctx.Err())
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd on %s (data %s): not ready after 30s", clientAddr, dir)
	}
	var eps []string
	for _, u := range cfg.AdvertiseClientUrls {
		eps = append(eps, u.String())
	}
	return &EmbeddedEtcd{etcd: e, dir: dir, Endpoints: eps}, nil
}

// advertiseURL is the client URL to advertise for the listen URL listen.
func advertiseURL(advertise string, listen *url.URL) (*url.URL, error) {
	if advertise == "" {
		if isUnspecified(listen.Hostname()) {
			return nil, fmt.Errorf("embedded etcd: client address %s has no host other machines can dial; advertise one (`loom coordinator --etcd-advertise HOST`)", listen.Host)
		}
		return listen, nil
	}
	if !strings.Contains(advertise, "://") {
		if _, _, err := net.SplitHostPort(advertise); err != nil {
			advertise = net.JoinHostPort(strings.Trim(advertise, "[]"), listen.Port())
		}
		advertise = listen.Scheme + "://" + advertise
	}
	u, err := url.Parse(advertise)
	if err != nil || u.Host == "" || u.Port() == "" || isUnspecified(u.Hostname()) {
		return nil, fmt.Errorf("embedded etcd: advertise %q: want http://HOST:PORT, HOST:PORT or HOST, with a host other machines can dial", advertise)
	}
	return u, nil
}

// Err reports a fatal server error (the channel never closes otherwise).
func (e *EmbeddedEtcd) Err() <-chan error { return e.etcd.Err() }

// Close stops the server, releases its ports and removes a temporary data
// directory.
func (e *EmbeddedEtcd) Close() error {
	e.etcd.Close()
	if e.tempDir {
		return os.RemoveAll(e.dir)
	}
	return nil
}

func freePort() (int, error) { return freePortOn("127.0.0.1") }

func freePortOn(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("find a free port: not a TCP address")
	}
	return addr.Port, nil
}
