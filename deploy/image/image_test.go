package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// staticBinary builds a tiny static program standing in for loom.
func staticBinary(t *testing.T, cgo bool) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	os.WriteFile(src, []byte("package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"loom test\") }\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module stand.in/loom\n\ngo 1.22\n"), 0o644)
	out := filepath.Join(dir, "loom")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if cgo {
		// A program that links libc dynamically.
		os.WriteFile(src, []byte("package main\n\n// int one(void) { return 1; }\nimport \"C\"\n\nfunc main() { println(C.one()) }\n"), 0o644)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1", "GOFLAGS=")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("cannot build a stand-in binary here: %v\n%s", err, b)
	}
	return out
}

func TestImageConfigAndLayer(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("builds a Linux binary")
	}
	bin := staticBinary(t, false)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), 0o644)
	img, err := Build(Options{Binary: bin, Version: "1.2.3", Revision: "abc123", CABundle: ca})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	if strings.Join(c.Entrypoint, " ") != BinaryPath || strings.Join(c.Cmd, " ") != "version" {
		t.Errorf("entrypoint %v cmd %v; want [%s] [version]", c.Entrypoint, c.Cmd, BinaryPath)
	}
	if c.User != "65532:65532" {
		t.Errorf("user %q; want the non-root 65532:65532", c.User)
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.version":  "1.2.3",
		"org.opencontainers.image.revision": "abc123",
		"org.opencontainers.image.title":    "loom",
		"org.opencontainers.image.source":   Source,
	} {
		if c.Labels[k] != want {
			t.Errorf("label %s = %q; want %q", k, c.Labels[k], want)
		}
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("platform %s/%s", cfg.OS, cfg.Architecture)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s; want OCI", mt)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v); want one", len(layers), err)
	}
	if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %s", mt)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]*tar.Header{}
	bodies := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
		bodies[h.Name], _ = io.ReadAll(tr)
	}
	binBytes, _ := os.ReadFile(bin)
	if h := got["usr/local/bin/loom"]; h == nil || h.Mode != 0o755 || h.Uid != 0 || !bytes.Equal(bodies["usr/local/bin/loom"], binBytes) {
		t.Errorf("usr/local/bin/loom: %+v (want the binary, 0755, root's: the user cannot replace it)", h)
	}
	if !strings.Contains(string(bodies["etc/passwd"]), "loom:x:65532:65532:") {
		t.Errorf("etc/passwd: %q", bodies["etc/passwd"])
	}
	for _, d := range []string{"data/", "checkpoints/", "home/loom/"} {
		if h := got[d]; h == nil || h.Typeflag != tar.TypeDir || h.Uid != UID {
			t.Errorf("%s: %+v; want a directory the user owns", d, h)
		}
	}
	if h := got["tmp/"]; h == nil || h.Mode != 0o1777 {
		t.Errorf("tmp/: %+v; want mode 1777", h)
	}
	if h := got["etc/loom/tls/"]; h == nil || h.Typeflag != tar.TypeDir {
		t.Errorf("etc/loom/tls/: %+v", h)
	}
	if _, ok := bodies["etc/ssl/certs/ca-certificates.crt"]; !ok {
		t.Error("no CA bundle")
	}
	for n, h := range got {
		if !h.ModTime.Equal(time.Unix(0, 0)) {
			t.Errorf("%s: time %v; want the epoch (reproducible builds)", n, h.ModTime)
		}
	}
	if _, ok := got["bin/sh"]; ok {
		t.Error("the image has a shell")
	}
	// Reproducible: the same inputs give the same digest.
	img2, _ := Build(Options{Binary: bin, Version: "1.2.3", Revision: "abc123", CABundle: ca})
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("two builds: %s and %s", d1, d2)
	}
	// The layout and tarball writers take it.
	p, err := layout.Write(filepath.Join(t.TempDir(), "oci"), empty.Index)
	if err != nil || p.AppendImage(img) != nil {
		t.Fatalf("layout: %v", err)
	}
	tag, _ := name.NewTag("loom:1.2.3")
	if err := tarball.WriteToFile(filepath.Join(t.TempDir(), "loom.tar"), tag, img); err != nil {
		t.Fatal(err)
	}
}

func TestImageRefusesDynamicBinary(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("builds a Linux binary")
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no C compiler to build a dynamic binary")
	}
	_, err := Build(Options{Binary: staticBinary(t, true), Version: "1"})
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("dynamic binary: %v; want the fix named", err)
	}
}

// TestPodmanRunsImage loads the image `make image` wrote and runs
// `loom version` in it, where podman can run containers here (make
// test-image sets LOOM_IMAGE_TAR).
func TestPodmanRunsImage(t *testing.T) {
	tarPath := os.Getenv("LOOM_IMAGE_TAR")
	if tarPath == "" {
		t.Skip("LOOM_IMAGE_TAR is not set: `make test-image` builds the image and runs it in podman")
	}
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed (scripts/setup.sh deploy installs it)")
	}
	run := func(args ...string) (string, error) {
		b, err := exec.Command(podman, args...).CombinedOutput()
		return string(b), err
	}
	out, err := run("load", "-q", "-i", tarPath)
	if err != nil {
		t.Fatalf("podman load: %v\n%s", err, out)
	}
	ref := "localhost/loom:" + os.Getenv("LOOM_IMAGE_VERSION")
	if i := strings.Index(out, "Loaded image: "); i >= 0 {
		ref = strings.TrimSpace(out[i+len("Loaded image: "):])
	}
	t.Cleanup(func() { run("rmi", "-f", ref) })
	// This machine's sandbox refuses crun's cgroup set-up (hybrid cgroups)
	// and raising rlimits; runc with modest limits works. Elsewhere plain
	// `podman run` does.
	args := []string{"run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}
	if _, err := exec.LookPath("runc"); err == nil {
		args = append([]string{"--runtime", "runc"}, args...)
	}
	out, err = run(append(args, ref, "version")...)
	if err != nil {
		// The sandbox's refusals, not the image's faults (a missing
		// binary or a bad entrypoint fails the test).
		if strings.Contains(out, "cgroup") || strings.Contains(out, "setrlimit") || strings.Contains(out, "OCI permission denied") {
			t.Skipf("podman cannot run containers here: %s", strings.TrimSpace(out))
		}
		t.Fatalf("podman run %s version: %v\n%s", ref, err, out)
	}
	want := "loom " + os.Getenv("LOOM_IMAGE_VERSION")
	if !strings.HasPrefix(strings.TrimSpace(out), want) {
		t.Errorf("podman run %s version printed %q; want %q", ref, out, want)
	}
	// It runs as the non-root user, with no shell to exec.
	out, err = run(append(args, "--entrypoint", "/bin/sh", ref, "-c", "id")...)
	if err == nil {
		t.Errorf("the image ran /bin/sh: %s", out)
	}
}
