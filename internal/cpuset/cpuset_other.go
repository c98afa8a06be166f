//go:build !linux

package cpuset

// Allowed returns ErrUnsupported outside Linux.
func Allowed() (Set, error) { return nil, ErrUnsupported }

// Bind returns ErrUnsupported outside Linux.
func Bind(Set) error { return ErrUnsupported }
