package data

import (
	"errors"
	"fmt"
	"math"

	"github.com/loomtrain/loom/api"
)

// Dataset is a job's data: the training loader over its sources and, when
// the spec asks for one, the validation loader. Close releases the files.
type Dataset struct {
	Train *Loader
	// Validation walks the held-out windows in a fixed order (no shuffle),
	// blended with the training weights; nil without data.validation.
	Validation *Loader
	files      []*File
}

// OpenDataset opens the token files of a job's data section for windows of
// seqLen tokens. Every file must have been prepared with the same
// tokenizer (its sidecar's name and hash) and vocabulary; a validation
// fraction holds out chunks of windows spread over every source ([Split]).
func OpenDataset(ds api.DataSpec, seqLen int) (*Dataset, error) {
	d := &Dataset{}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	cfg := LoaderConfig{SeqLen: seqLen, Shuffle: ds.Shuffle, Seed: ds.Seed}
	var first *File
	open := func(field, path string) (*File, error) {
		f, err := Open(path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		d.files = append(d.files, f)
		if first == nil {
			first = f
			return f, nil
		}
		a, b := first.Meta(), f.Meta()
		if a.Tokenizer != b.Tokenizer || a.TokenizerSHA256 != b.TokenizerSHA256 || a.VocabSize != b.VocabSize {
			return nil, fmt.Errorf("%s: %s was prepared with tokenizer %s (vocabulary %d) but %s with %s (vocabulary %d): prepare every source with the same tokenizer",
				field, path, b.Tokenizer, b.VocabSize, first.Path(), a.Tokenizer, a.VocabSize)
		}
		return f, nil
	}
	list := ds.SourceList()
	var train, val []Source
	for i, src := range list {
		field := "data.path"
		if len(ds.Sources) > 0 {
			field = fmt.Sprintf("data.sources[%d].path", i)
		}
		f, err := open(field, src.Path)
		if err != nil {
			return nil, err
		}
		s := Source{File: f, Weight: src.Weight}
		if fr := ds.Validation.Fraction; fr > 0 {
			n := int(NumWindows(f.Len(), seqLen))
			sp, ok := NewSplit(n, fr)
			if !ok {
				return nil, fmt.Errorf("data.validation.fraction: %s has %d windows of seq_len %d, too few to hold out %g of them in chunks of at least 2 (needs %d): raise the fraction or add data", src.Path, n, seqLen, fr, 2*max(2, int(math.Round(1/fr))))
			}
			s.Split = &sp
			v := sp
			v.Validation = true
			val = append(val, Source{File: f, Weight: src.Weight, Split: &v})
		}
		train = append(train, s)
	}
	if p := ds.Validation.Path; p != "" {
		f, err := open("data.validation.path", p)
		if err != nil {
			return nil, err
		}
		val = []Source{{File: f, Weight: 1}}
	}
	var err error
	if d.Train, err = NewBlendLoader(train, cfg); err != nil {
		return nil, err
	}
	if len(val) > 0 {
		vcfg := cfg
		vcfg.Shuffle = false
		if d.Validation, err = NewBlendLoader(val, vcfg); err != nil {
			return nil, fmt.Errorf("data.validation: %w", err)
		}
	}
	ok = true
	return d, nil
}

// Close closes every file.
func (d *Dataset) Close() error {
	var errs []error
	for _, f := range d.files {
		if err := f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	d.files = nil
	return errors.Join(errs...)
}

// EvalSamples returns the validation samples [first, first+n) that data-
// parallel rank of dp evaluates in batch b of a pass: a pass covers
// samples [0, batches·globalBatch), and batch b of rank r is its slice
// of [b·globalBatch, (b+1)·globalBatch), as in training. Every layout thus
// evaluates the same windows.
func EvalSamples(batch, rank, dp, globalBatch int) (first, n int) {
	per := globalBatch / dp
	return batch*globalBatch + rank*per, per
}
