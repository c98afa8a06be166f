package parallel

import (
	"errors"
	"fmt"
)

// Error classes; match with errors.Is. A *PeerError wraps one of them (or a
// context error) and names the peer.
var (
	// ErrPeerTimeout: a peer sent nothing for the group's Timeout while an
	// operation waited for it.
	ErrPeerTimeout = errors.New("peer did not answer within the group timeout")
	// ErrPeerGone: the connection to or from a peer broke or was closed.
	ErrPeerGone = errors.New("connection to peer lost")
	// ErrStaleGeneration: a frame or a group belongs to an older generation
	// of the job than the receiver's.
	ErrStaleGeneration = errors.New("stale generation")
	// ErrMismatch: ranks called different operations, or with different
	// lengths, at the same point of the group's sequence.
	ErrMismatch = errors.New("ranks disagree on the operation")
	// ErrClosed: the group or transport was closed.
	ErrClosed = errors.New("closed")
)

// PeerError reports a failed operation and the peer it failed on.
type PeerError struct {
	Rank int    // the peer's global rank
	Addr string // the peer's address
	Op   string // the operation, e.g. "all-reduce"
	Err  error  // the cause: ErrPeerTimeout, ErrPeerGone, ... or a context error
}

// Error implements error.
func (e *PeerError) Error() string {
	return fmt.Sprintf("%s: peer rank %d (%s): %v", e.Op, e.Rank, e.Addr, e.Err)
}

// Unwrap returns the cause.
func (e *PeerError) Unwrap() error { return e.Err }
