package data

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPrepRoundTrip(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"src/b.go":             "package b\n",
		"src/a.go":             "package a\n",
		"src/sub/deep/c.go":    "package c\n",
		"src/sub/notes.txt":    "not included",
		"src/.git/x.go":        "hidden dir",
		"src/.hidden.go":       "hidden file",
		"src/sub/bin.go":       "binary\x00file",
		"corpus.jsonl":         `{"text":"first"}` + "\n\n" + `{"text":"sé\ncond","id":7}` + "\n" + `{"text":""}`,
		"plain.txt":            "plain\x00file named directly",
		"src/vendor/z/d.go.in": "not matched",
	})
	out := filepath.Join(dir, "out.bin")
	meta, st := prepFile(t, PrepConfig{
		Inputs:  []string{filepath.Join(dir, "src"), filepath.Join(dir, "corpus.jsonl"), filepath.Join(dir, "plain.txt")},
		Include: []string{"*.go", "sub/*.txt"},
		Out:     out,
		Workers: 3,
	})
	want := byteDocs("package a\n", "package b\n", "package c\n", "not included",
		"first", "sé\ncond", "", "plain\x00file named directly")
	got := readAll(t, out)
	if !slices.Equal(got, want) {
		t.Fatalf("tokens differ:\n got %v\nwant %v", got, want)
	}
	if meta.Documents != 8 || meta.Tokens != int64(len(want)) || meta.VocabSize != 258 || meta.TokenBytes != 2 || meta.Tokenizer != "byte" {
		t.Errorf("meta = %+v", meta)
	}
	if st.Skipped != 1 || st.Files != 7 || st.Documents != 8 {
		t.Errorf("stats = %+v, want 1 skipped, 7 files, 8 documents", st)
	}
	f, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Verify(context.Background()); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if f.Meta() != meta {
		t.Errorf("sidecar %+v != returned meta %+v", f.Meta(), meta)
	}
	// No temporary files left behind.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestPrepWorkersIdentical(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{}
	var jsonl strings.Builder
	for i := range 60 {
		files[filepath.ToSlash(filepath.Join("d", string(rune('a'+i%7)), strings.Repeat("x", i%5+1)+string(rune('0'+i%10))+".txt"))] = strings.Repeat(string(rune('A'+i%26)), i*37%500)
		jsonl.WriteString(`{"text":"` + strings.Repeat("j", i*101%(jsonlChunk/2)) + `"}` + "\n")
	}
	writeTree(t, dir, files)
	writeTree(t, dir, map[string]string{"d/big.jsonl": jsonl.String()})
	var outs [][]byte
	var metas []Meta
	for _, w := range []int{1, 2, 8} {
		out := filepath.Join(dir, "out"+string(rune('0'+w))+".bin")
		// The output lives inside the input directory: it must not be read.
		m, _ := prepFile(t, PrepConfig{Inputs: []string{filepath.Join(dir, "d"), dir + "/d"}, Out: out, Workers: w})
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, b)
		metas = append(metas, m)
	}
	for i := 1; i < len(outs); i++ {
		if !slices.Equal(outs[0], outs[i]) || metas[0] != metas[i] {
			t.Fatalf("output with worker count #%d differs from 1 worker", i)
		}
	}
	if metas[0].Documents != 2*(60+60) {
		t.Errorf("documents = %d, want %d", metas[0].Documents, 240)
	}
}

func TestPrepReplacesOutput(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"a.txt": "one", "b.txt": "two two"})
	out := filepath.Join(dir, "o.bin")
	prepFile(t, PrepConfig{Inputs: []string{filepath.Join(dir, "a.txt")}, Out: out})
	prepFile(t, PrepConfig{Inputs: []string{filepath.Join(dir, "b.txt")}, Out: out})
	if got := readAll(t, out); !slices.Equal(got, byteDocs("two two")) {
		t.Fatalf("got %v", got)
	}
}

func TestPrepErrors(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"bad.jsonl":    `{"text":"ok"}` + "\n" + `{"text":"ok"}` + "\n" + `{"text": 5}` + "\n",
		"notext.jsonl": `{"body":"x"}` + "\n",
		"junk.jsonl":   "\n\n" + `{"text":` + "\n",
		"empty/x.bin":  "\x00\x01",
		"a.txt":        "a",
	})
	out := filepath.Join(dir, "o.bin")
	cases := []struct {
		name   string
		cfg    PrepConfig
		substr []string
	}{
		{"type", PrepConfig{Inputs: []string{filepath.Join(dir, "a.txt"), filepath.Join(dir, "bad.jsonl")}}, []string{"bad.jsonl:3", `"text"`}},
		{"no text", PrepConfig{Inputs: []string{filepath.Join(dir, "notext.jsonl")}}, []string{"notext.jsonl:1", `no "text" field`}},
		{"syntax", PrepConfig{Inputs: []string{filepath.Join(dir, "junk.jsonl")}}, []string{"junk.jsonl:3", "malformed JSONL"}},
		{"missing", PrepConfig{Inputs: []string{filepath.Join(dir, "nope.txt")}}, []string{"nope.txt", "no such file"}},
		{"nothing", PrepConfig{Inputs: []string{filepath.Join(dir, "empty")}}, []string{"no documents", "--include"}},
		{"bad glob", PrepConfig{Inputs: []string{dir}, Include: []string{"[x"}}, []string{`"[x"`}},
		{"no inputs", PrepConfig{}, []string{"no inputs"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.Out = out
			_, _, err := Prep(context.Background(), c.cfg)
			if err == nil {
				t.Fatal("Prep succeeded, want an error")
			}
			for _, s := range c.substr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("failed Prep left %s behind (%v)", out, err)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if strings.Contains(e.Name(), ".tmp") {
					t.Errorf("temporary file %s left behind", e.Name())
				}
			}
		})
	}
}

func TestPrepCanceled(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"a.txt": "a"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := Prep(ctx, PrepConfig{Inputs: []string{dir}, Out: filepath.Join(dir, "o.bin")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Prep on a canceled context: %v", err)
	}
}

func TestPrepProgress(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"a.txt": "aaaa", "b/c.txt": "cc"})
	var last PrepStats
	calls := 0
	prepFile(t, PrepConfig{Inputs: []string{dir}, Out: filepath.Join(dir, "o.bin"),
		Progress: func(s PrepStats) { last = s; calls++ }})
	if calls == 0 || !last.Done || last.Bytes != 6 || last.TotalBytes != 6 || last.Documents != 2 {
		t.Fatalf("last progress %+v after %d calls", last, calls)
	}
}

func TestParseJSONLLine(t *testing.T) {
	for _, c := range []struct {
		in   string
		text string
		ok   bool
		err  bool
	}{
		{`{"text":"a\u00e9"}`, "aé", true, false},
		{"  \r", "", false, false},
		{`{"text":null}`, "", false, true},
		{`["text"]`, "", false, true},
		{`{"text":"a"} trailing`, "", false, true},
	} {
		text, ok, err := parseJSONLLine([]byte(c.in))
		if string(text) != c.text || ok != c.ok || (err != nil) != c.err {
			t.Errorf("parseJSONLLine(%q) = %q, %v, %v", c.in, text, ok, err)
		}
	}
}

func FuzzParseJSONLLine(f *testing.F) {
	for _, s := range []string{`{"text":"x"}`, `{"text":""}`, `{}`, `{"text":"\ud800"}`, "\xff", `{"text":"a","text":"b"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		text, ok, err := parseJSONLLine(line)
		if err != nil && ok {
			t.Fatal("ok with an error")
		}
		if !ok && len(text) > 0 {
			t.Fatal("text without ok")
		}
	})
}
