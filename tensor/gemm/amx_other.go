//go:build !linux || !amd64 || purego

package gemm

import "errors"

// amxAvailable: the AMX kernel is built for Linux on amd64 only.
func amxAvailable() error {
	return errors.New("the AMX kernel needs Linux on amd64 (and no purego tag)")
}
