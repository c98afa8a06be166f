package proto

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGeneratedCodeIsCurrent regenerates every .proto into a temporary
// directory and fails if the committed generated code differs.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if _, err := exec.LookPath("protoc"); err != nil {
		t.Skip("protoc not installed (Debian: apt-get install protobuf-compiler); cannot check generated code")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := t.TempDir()
	cmd := exec.CommandContext(ctx, "bash", "gen.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen.sh: %v\n%s", err, b)
	}
	fresh, err := filepath.Glob(filepath.Join(out, "proto", "loom", "v1", "*.go"))
	if err != nil || len(fresh) == 0 {
		t.Fatalf("gen.sh wrote no Go files under %s (err %v)", out, err)
	}
	committed, _ := filepath.Glob(filepath.Join("loom", "v1", "*.pb.go"))
	if len(committed) != len(fresh) {
		t.Errorf("committed %d generated files, gen.sh makes %d: run proto/gen.sh", len(committed), len(fresh))
	}
	for _, f := range fresh {
		name := filepath.Base(f)
		want, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("loom", "v1", name))
		if err != nil {
			t.Errorf("%s: %v: run proto/gen.sh", name, err)
			continue
		}
		if !bytes.Equal(dropToolVersions(got), dropToolVersions(want)) {
			t.Errorf("loom/v1/%s is stale: run proto/gen.sh", name)
		}
	}
}

// dropToolVersions removes the "// \tprotoc vX" style header lines, which
// name the installed protoc release, not anything about the schema.
func dropToolVersions(b []byte) []byte {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "// \tprotoc ") || strings.HasPrefix(l, "// - protoc ") {
			continue
		}
		out = append(out, l)
	}
	return []byte(strings.Join(out, "\n"))
}
