package main

import (
	"fmt"
	"os"

	"github.com/loomtrain/loom/api"
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/tensor/fast"
	"github.com/loomtrain/loom/tensor/gemm"
)

// tuneEnv turns GEMM autotuning off when set to "off" (it is on by
// default: each large GEMM shape is tuned on first use and the plan cached
// under $XDG_CACHE_HOME/loom/gemm; see docs/kernels.md).
const tuneEnv = "LOOM_GEMM_TUNE"

// gemmTuning is the tuning every command's kernels use.
func gemmTuning() *gemm.TuneOptions {
	if os.Getenv(tuneEnv) == "off" {
		return nil
	}
	return &gemm.TuneOptions{}
}

// newKernels returns the kernels every command computes with, using
// threads threads (0: all cores) and float32 GEMMs, and a function that
// releases them.
func newKernels(threads int) (tensor.Kernels, func()) {
	k, err := newKernelsPrecision(threads, "fp32")
	if err != nil {
		panic(err) // fp32 always has a kernel
	}
	return k, k.Close
}

// newKernelsPrecision is newKernels for a train.precision value ("fp32",
// "bf16"; "" means fp32).
func newKernelsPrecision(threads int, precision string) (*fast.Kernels, error) {
	if precision == "" {
		precision = "fp32"
	}
	p, err := gemm.ParsePrecision(precision)
	if err != nil {
		return nil, fmt.Errorf("train.precision: %w", err)
	}
	return fast.NewWith(fast.Options{Threads: threads, Precision: p, Tune: gemmTuning()})
}

// newTrainKernels returns the kernels a training rank computes with: the
// spec's train.precision for the GEMMs.
func newTrainKernels(threads int, spec api.JobSpec) (tensor.Kernels, func(), error) {
	k, err := newKernelsPrecision(threads, spec.Train.Precision)
	if err != nil {
		return nil, nil, err
	}
	return k, k.Close, nil
}
