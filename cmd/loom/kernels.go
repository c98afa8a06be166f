package main

import (
	"github.com/loomtrain/loom/tensor"
)

// newKernels returns the kernels every command computes with, using
// threads threads (0: all cores), and a function that releases them.
func newKernels(threads int) (tensor.Kernels, func()) {
	return tensor.Reference{}, func() {}
}
