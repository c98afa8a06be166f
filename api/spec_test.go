package api

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseSpecDefaults(t *testing.T) {
	spec, err := ParseSpec([]byte("data:\n  path: x.bin\n"), "job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultSpec()
	want.Data.Path = "x.bin"
	if !reflect.DeepEqual(spec, want) {
		t.Fatalf("defaults not filled:\n got %+v\nwant %+v", spec, want)
	}
	if spec.AccumulationSteps() != 1 || spec.Parallel.WorldSize() != 1 {
		t.Fatalf("accumulation %d world %d", spec.AccumulationSteps(), spec.Parallel.WorldSize())
	}
}

func TestParseSpecOverrides(t *testing.T) {
	src := `
name: run1
model: {dim: 64, n_heads: 4, n_kv_heads: 2, tie_embeddings: true}
data: {path: a.bin, shuffle: false}
train: {global_batch: 8, micro_batch: 2, lr: 0.01}
`
	spec, err := ParseSpec([]byte(src), "job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Model.Dim != 64 || spec.Model.NKVHeads != 2 || !spec.Model.TieEmbeddings || spec.Data.Shuffle {
		t.Fatalf("overrides lost: %+v", spec)
	}
	if spec.Model.NLayers != 4 {
		t.Fatalf("default n_layers lost: %d", spec.Model.NLayers)
	}
	if got := spec.AccumulationSteps(); got != 4 {
		t.Fatalf("accumulation = %d, want 4", got)
	}
}

func TestParseSpecErrors(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want []string
	}{
		{"malformed", "model: [1, 2\n", []string{"job.yaml", "malformed YAML"}},
		{"not mapping", "- a\n- b\n", []string{"must be a YAML mapping"}},
		{"empty", "", []string{"empty spec"}},
		{"unknown top", "data: {path: a}\nmodle: {}\n", []string{"modle", "line 2", "unknown key", "allowed keys here: checkpoint, data, elastic, model, name, parallel, train"}},
		{"unknown nested", "data: {path: a}\nmodel:\n  dimm: 3\n", []string{"model.dimm", "line 3", "dim, ffn_hidden"}},
		{"section scalar", "data: {path: a}\nmodel: 3\n", []string{"model", "must be a mapping"}},
		{"wrong type", "data: {path: a}\nmodel: {dim: abc}\n", []string{"line 2", "abc"}},
		{"bad heads", "data: {path: a}\nmodel: {n_heads: 4, n_kv_heads: 3}\n", []string{"model.n_kv_heads", "line 2", "must divide model.n_heads (4)"}},
		{"zero stage", "data: {path: a}\nparallel: {zero: 5}\n", []string{"parallel.zero", "got 5", "allowed: 0, 1, 2, 3"}},
		{"transport", "data: {path: a}\nparallel: {transport: rdma}\n", []string{"parallel.transport", "rdma", "allowed: auto, tcp, shm, grpc"}},
		{"batch", "data: {path: a}\ntrain: {global_batch: 10, micro_batch: 4}\n", []string{"train.global_batch", "multiple of train.micro_batch"}},
		{"schedule", "data: {path: a}\ntrain: {schedule: step}\n", []string{"train.schedule", `"step"`, "cosine"}},
		{"no data", "name: x\n", []string{"data.path", "loom prep"}},
		{"micro-batches disagree", "data: {path: a}\nparallel: {micro_batches: 4}\ntrain: {global_batch: 8, micro_batch: 1}\n",
			[]string{"parallel.micro_batches", "got 4", "8 ÷ (1 × 1) = 8", "set it to 8 or leave it out"}},
		{"pipeline schedule", "data: {path: a}\nparallel: {pp: 2, schedule: dualpipe}\n", []string{"parallel.schedule", `"dualpipe"`, "gpipe, 1f1b, interleaved-1f1b, zb-h1"}},
		{"virtual stages", "data: {path: a}\nparallel: {pp: 2, virtual_stages: 2}\n", []string{"parallel.virtual_stages", "only parallel.schedule interleaved-1f1b"}},
		{"too many stages", "data: {path: a}\nmodel: {n_layers: 4}\nparallel: {pp: 2, virtual_stages: 3, schedule: interleaved-1f1b}\n", []string{"parallel.pp", "(2 × 3) must not exceed model.n_layers (4)"}},
		{"stage cut", "data: {path: a}\nmodel: {n_layers: 4}\nparallel: {pp: 2, stages: [3, 2]}\n", []string{"parallel.stages", "[3 2]", "summing to model.n_layers (4)"}},
		{"interleaved rounds", "data: {path: a}\nmodel: {n_layers: 4}\nparallel: {pp: 2, virtual_stages: 2, schedule: interleaved-1f1b}\ntrain: {global_batch: 5, micro_batch: 1}\n",
			[]string{"parallel.schedule", "with 5 micro-batches per step", "use 4 or 6"}},
		{"recompute zb", "data: {path: a}\nparallel: {schedule: zb-h1}\ntrain: {recompute: true}\n", []string{"train.recompute", "zb-h1"}},
		{"several", "model: {dim: -1}\ntrain: {lr: 0}\n", []string{"4 problems", "model.dim", "train.lr", "data.path"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(c.src), "job.yaml")
			if err == nil {
				t.Fatal("no error")
			}
			var se *SpecError
			if !errors.As(err, &se) {
				t.Fatalf("error %T is not a *SpecError: %v", err, err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func FuzzParseSpec(f *testing.F) {
	f.Add([]byte("data: {path: a}\nmodel: {dim: 64}\n"))
	f.Add([]byte("model:\n  dim: [1]\n"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, src []byte) {
		spec, err := ParseSpec(src, "fuzz.yaml")
		if err == nil {
			if verr := spec.Validate(); verr != nil {
				t.Fatalf("accepted an invalid spec: %v", verr)
			}
		}
	})
}

func TestParseSpecDataSources(t *testing.T) {
	src := `
data:
  sources:
    - {path: a.bin, weight: 3}
    - {path: b.bin, weight: 1}
  validation: {fraction: 0.01}
train: {eval_every: 50, eval_batches: 2}
`
	spec, err := ParseSpec([]byte(src), "job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Data.SourceList()) != 2 || spec.Data.Sources[0].Weight != 3 || spec.Data.Validation.Fraction != 0.01 || spec.Train.EvalEvery != 50 {
		t.Fatalf("parsed %+v", spec.Data)
	}
	bad := `
data:
  path: x.bin
  sources:
    - {path: "", weight: 0, colour: red}
  validation: {path: v.bin, fraction: 0.7}
train: {eval_every: -1, eval_batches: 0}
`
	_, err = ParseSpec([]byte(bad), "job.yaml")
	if err == nil {
		t.Fatal("bad data section accepted")
	}
	if !strings.Contains(err.Error(), "data.sources[0].colour") {
		t.Fatalf("unknown key inside a source not reported: %v", err)
	}
	bad = strings.Replace(bad, ", colour: red", "", 1)
	_, err = ParseSpec([]byte(bad), "job.yaml")
	for _, f := range []string{"data.path", "data.sources[0].path", "data.sources[0].weight", "data.validation.fraction", "train.eval_every", "train.eval_batches"} {
		if err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("no error naming %s in %v", f, err)
		}
	}
	_, err = ParseSpec([]byte("data: {path: x.bin}\ntrain: {eval_every: 10}\n"), "job.yaml")
	if err == nil || !strings.Contains(err.Error(), "needs a validation set") {
		t.Errorf("eval_every without validation: %v", err)
	}
}
