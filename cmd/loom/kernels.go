package main

import (
	"github.com/loomtrain/loom/tensor"
	"github.com/loomtrain/loom/tensor/fast"
)

// newKernels returns the kernels every command computes with, using
// threads threads (0: all cores), and a function that releases them.
func newKernels(threads int) (tensor.Kernels, func()) {
	k := fast.New(threads)
	return k, k.Close
}
