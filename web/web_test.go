package web

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBundleIsCurrent rebuilds the page from src/ into a temporary
// directory and fails if the committed dist/ differs.
func TestBundleIsCurrent(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not installed; cannot check the bundle (scripts/setup.sh test installs what it needs)")
	}
	if _, err := os.Stat(filepath.Join("node_modules", "esbuild")); err != nil {
		t.Skip("web/node_modules missing: run `make web` (npm ci) to check the bundle")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := t.TempDir()
	if b, err := exec.CommandContext(ctx, "node", "build.mjs", out).CombinedOutput(); err != nil {
		t.Fatalf("node build.mjs: %v\n%s", err, b)
	}
	fresh, _ := filepath.Glob(filepath.Join(out, "*"))
	committed, _ := filepath.Glob(filepath.Join("dist", "*"))
	if len(fresh) != len(committed) {
		t.Errorf("dist/ has %d files, the build makes %d: run `make web`", len(committed), len(fresh))
	}
	for _, f := range fresh {
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Join("dist", filepath.Base(f)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("dist/%s is stale: run `make web` and commit web/dist", filepath.Base(f))
		}
	}
}

// The embedded page has what index.html loads.
func TestAssetsEmbedded(t *testing.T) {
	a := Assets()
	page, err := fs.ReadFile(a, "index.html")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"app.js", "app.css"} {
		if !strings.Contains(string(page), `"`+f+`"`) {
			t.Errorf("index.html does not load %s", f)
		}
		if b, err := fs.ReadFile(a, f); err != nil || len(b) == 0 {
			t.Errorf("embedded %s: %d bytes, %v", f, len(b), err)
		}
	}
}
