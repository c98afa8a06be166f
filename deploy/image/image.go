// Package image builds Loom's OCI image without a container engine: the
// static `loom` binary, a non-root user, a CA bundle and the directories
// the Kubernetes manifests mount, in one layer, assembled with
// go-containerregistry into an OCI layout and a `docker load`/`podman
// load` tarball (`make image`; deploy/image/Dockerfile is the equivalent
// for Docker users).
package image

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's fixed facts, which the Kubernetes manifests and the
// Dockerfile repeat (deploy/k8s's test checks them against these).
const (
	// BinaryPath is where the loom binary lives.
	BinaryPath = "/usr/local/bin/loom"
	// UID and GID are the non-root user's ("loom").
	UID = 65532
	GID = 65532
	// DataDir, CheckpointDir and TLSDir are the mount points the
	// manifests use (--data-root, --checkpoint-root, --tls-dir).
	DataDir       = "/data"
	CheckpointDir = "/checkpoints"
	TLSDir        = "/etc/loom/tls"
	// CABundle is where the system CA bundle goes (for an etcd or other
	// endpoint with a public certificate).
	CABundle = "/etc/ssl/certs/ca-certificates.crt"
	// Source is the org.opencontainers.image.source label.
	Source = "https://github.com/loomtrain/loom"
)

// Options says what goes in the image.
type Options struct {
	// Binary is the static loom binary (required: CGO_ENABLED=0).
	Binary string
	// Version is the org.opencontainers.image.version label (required).
	Version string
	// Revision is the org.opencontainers.image.revision label (the git
	// commit; optional).
	Revision string
	// CABundle is the PEM bundle copied to CABundle (optional; default
	// none).
	CABundle string
	// Created is the image's and every file's time (default the Unix
	// epoch, so that a build is reproducible; SOURCE_DATE_EPOCH sets it in
	// the command).
	Created time.Time
	// Arch is the binary's architecture (default amd64).
	Arch string
}

// Labels returns the image's labels.
func Labels(o Options) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       "loom",
		"org.opencontainers.image.description": "Loom: distributed pretraining orchestrator (one static binary: coordinator, worker, submit)",
		"org.opencontainers.image.version":     o.Version,
		"org.opencontainers.image.source":      Source,
	}
	if o.Revision != "" {
		l["org.opencontainers.image.revision"] = o.Revision
	}
	return l
}

// checkStatic refuses a dynamically linked binary: the image has no libc.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("binary %s: %w (want a Linux ELF executable)", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			b, _ := io.ReadAll(prog.Open())
			return fmt.Errorf("binary %s is dynamically linked (interpreter %s); build it with CGO_ENABLED=0: the image has no C library",
				p, bytes.TrimRight(b, "\x00"))
		}
	}
	return nil
}

// Build assembles the image.
func Build(o Options) (v1.Image, error) {
	if o.Binary == "" || o.Version == "" {
		return nil, errors.New("image: Options.Binary and Options.Version are required")
	}
	if o.Arch == "" {
		o.Arch = "amd64"
	}
	if o.Created.IsZero() {
		o.Created = time.Unix(0, 0).UTC()
	}
	if err := checkStatic(o.Binary); err != nil {
		return nil, err
	}
	layer, err := Layer(o)
	if err != nil {
		return nil, err
	}
	layerTar := layer
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image: layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg := &v1.ConfigFile{
		Architecture: o.Arch,
		OS:           "linux",
		Created:      v1.Time{Time: o.Created},
		Config: v1.Config{
			Entrypoint: []string{BinaryPath},
			Cmd:        []string{"version"},
			User:       fmt.Sprintf("%d:%d", UID, GID),
			WorkingDir: "/home/loom",
			Env:        []string{"PATH=/usr/local/bin", "HOME=/home/loom"},
			Labels:     Labels(o),
			ExposedPorts: map[string]struct{}{
				"7070/tcp": {}, // coordinator gRPC
				"7071/tcp": {}, // worker data plane
				"7080/tcp": {}, // coordinator dashboard, /metrics, probes
				"7081/tcp": {}, // worker /metrics, probes
			},
		},
	}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return nil, fmt.Errorf("image: config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: l, History: v1.History{
		Created: v1.Time{Time: o.Created}, CreatedBy: "loom deploy/image: " + path.Base(o.Binary) + " as " + BinaryPath,
	}})
	if err != nil {
		return nil, fmt.Errorf("image: append the layer: %w", err)
	}
	return img, nil
}

// entry is one file or directory of the layer.
type entry struct {
	name string
	mode int64
	uid  int
	dir  bool
	body []byte
	src  string // read the body from this file
}

// Entries lists the layer's files and directories, in order.
func entries(o Options) []entry {
	es := []entry{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/passwd", mode: 0o644, body: []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nloom:x:%d:%d:loom:/home/loom:/sbin/nologin\n", UID, GID))},
		{name: "etc/group", mode: 0o644, body: []byte(fmt.Sprintf("root:x:0:\nloom:x:%d:\n", GID))},
		{name: "etc/nsswitch.conf", mode: 0o644, body: []byte("hosts: files dns\n")},
		{name: "etc/loom/", mode: 0o755, dir: true},
		{name: TLSDir[1:] + "/", mode: 0o755, dir: true},
		{name: "home/", mode: 0o755, dir: true},
		{name: "home/loom/", mode: 0o755, uid: UID, dir: true},
		{name: "tmp/", mode: 0o1777, dir: true},
		{name: DataDir[1:] + "/", mode: 0o755, uid: UID, dir: true},
		{name: CheckpointDir[1:] + "/", mode: 0o755, uid: UID, dir: true},
		{name: "usr/", mode: 0o755, dir: true},
		{name: "usr/local/", mode: 0o755, dir: true},
		{name: "usr/local/bin/", mode: 0o755, dir: true},
		{name: BinaryPath[1:], mode: 0o755, src: o.Binary},
	}
	if o.CABundle != "" {
		es = append(es,
			entry{name: "etc/ssl/", mode: 0o755, dir: true},
			entry{name: "etc/ssl/certs/", mode: 0o755, dir: true},
			entry{name: CABundle[1:], mode: 0o644, src: o.CABundle})
	}
	return es
}

// Layer returns the image's one layer as an uncompressed tar.
func Layer(o Options) ([]byte, error) {
	if o.Created.IsZero() {
		o.Created = time.Unix(0, 0).UTC()
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries(o) {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.uid, ModTime: o.Created, Format: tar.FormatPAX}
		if e.uid != 0 {
			h.Uname, h.Gname = "loom", "loom"
		} else {
			h.Uname, h.Gname = "root", "root"
		}
		body := e.body
		if e.src != "" {
			b, err := os.ReadFile(e.src)
			if err != nil {
				return nil, fmt.Errorf("image: %w", err)
			}
			body = b
		}
		if e.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// CompressedSize is what a registry stores and a node pulls: the
// manifest, the config and the compressed layers.
func CompressedSize(img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return 0, err
	}
	n := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n, nil
}
