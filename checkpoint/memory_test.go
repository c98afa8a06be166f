package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
)

// A snapshot's parts, gathered into a store directory without a manifest,
// open verified and read back resharded like a committed checkpoint; a
// changed byte or a missing rank is refused, naming the file or rank.
func TestOpenParts(t *testing.T) {
	m, _ := model.New(tinyConfig(false), tensor.Reference{})
	m.Init(7)
	jobDir := filepath.Join(t.TempDir(), "j")
	parts := saveSharded(t, jobDir, m, 6, 3, false)
	store := filepath.Join(t.TempDir(), "store")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		for _, f := range p.Files {
			if err := os.Rename(filepath.Join(p.Dir, f.Path), filepath.Join(store, f.Path)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Any order of parts.
	ck, err := OpenParts(store, []RankPart{parts[2], parts[0], parts[1]})
	if err != nil {
		t.Fatal(err)
	}
	if ck.Manifest.Step != 6 || ck.State.Step != 6 || ck.Manifest.Layout.WorldSize != 3 {
		t.Fatalf("manifest step %d state step %d layout %v", ck.Manifest.Step, ck.State.Step, ck.Manifest.Layout)
	}
	got, err := ck.Model(tensor.Reference{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range m.Params {
		if got.Params[i] != m.Params[i] {
			t.Fatalf("param %d: %v, want %v", i, got.Params[i], m.Params[i])
		}
	}
	if _, err := OpenParts(store, parts[:2]); err == nil || !strings.Contains(err.Error(), "2 parts of 3 ranks") {
		t.Errorf("a missing rank: %v", err)
	}
	shard := filepath.Join(store, parts[1].Files[0].Path)
	b, err := os.ReadFile(shard)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 1
	if err := os.WriteFile(shard, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenParts(store, parts); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), parts[1].Files[0].Path) || !strings.Contains(err.Error(), "SHA-256") {
		t.Errorf("a changed byte: %v", err)
	}
}
