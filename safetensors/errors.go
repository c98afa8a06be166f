// Package safetensors reads and writes the Hugging Face safetensors format:
// an 8-byte little-endian header length N, N bytes of JSON header describing
// each tensor's dtype, shape and byte range, then the tensor bytes.
//
// The reader validates the whole header up front (dtypes, shapes, offsets,
// full coverage of the byte buffer, duplicate names) so that every later read
// is a bounds-checked slice of a buffer already known to be consistent. The
// writer streams tensor bytes from []float32 views without building the file
// in memory, and commits files atomically.
package safetensors

import (
	"errors"
	"fmt"
)

// Error classes. Every error returned by this package that concerns file
// contents is an *Error whose Err is one of these, so callers can use
// errors.Is(err, ErrFormat) and friends.
var (
	// ErrFormat marks a file or header that does not follow the safetensors format.
	ErrFormat = errors.New("invalid safetensors data")
	// ErrUnsupportedDType marks a well-formed tensor whose dtype cannot be converted to float32.
	ErrUnsupportedDType = errors.New("unsupported dtype")
	// ErrNotFound marks a request for a tensor name absent from the file.
	ErrNotFound = errors.New("tensor not found")
	// ErrRange marks a read of elements outside a tensor.
	ErrRange = errors.New("element range out of bounds")
	// ErrWriter marks misuse of the Writer (wrong order, wrong length, bad shapes).
	ErrWriter = errors.New("invalid write")
)

// Error describes one problem with a safetensors file or write: which file,
// which tensor (empty for file-level problems), which header field, and what
// is wrong. It unwraps to one of the package's sentinel errors.
type Error struct {
	File   string // path given to Open or Create, or "<bytes>" for Parse
	Tensor string // tensor name, empty if the problem is not tensor-specific
	Field  string // e.g. "header length", "dtype", "shape", "data_offsets"
	Msg    string // what is wrong and, where useful, what is allowed
	Err    error  // class: ErrFormat, ErrUnsupportedDType, ErrNotFound, ErrRange, ErrWriter
}

// Error implements error.
func (e *Error) Error() string {
	s := "safetensors: " + e.File
	if e.Tensor != "" {
		s += fmt.Sprintf(": tensor %q", e.Tensor)
	}
	if e.Field != "" {
		s += ": " + e.Field
	}
	return s + ": " + e.Msg
}

// Unwrap returns the error class.
func (e *Error) Unwrap() error { return e.Err }

// maxReportedErrors bounds how many per-tensor header problems are joined
// into one error, so a corrupt header with a million entries stays readable.
const maxReportedErrors = 16

// errList collects per-tensor problems so a bad header reports all of them at once.
type errList struct {
	errs    []error
	dropped int
}

func (l *errList) add(e error) {
	if len(l.errs) < maxReportedErrors {
		l.errs = append(l.errs, e)
		return
	}
	l.dropped++
}

func (l *errList) err(file string) error {
	if len(l.errs) == 0 {
		return nil
	}
	if l.dropped > 0 {
		l.errs = append(l.errs, &Error{File: file, Msg: fmt.Sprintf("%d more problems not shown", l.dropped), Err: ErrFormat})
	}
	if len(l.errs) == 1 {
		return l.errs[0]
	}
	return errors.Join(l.errs...)
}
