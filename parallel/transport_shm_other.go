//go:build !linux

package parallel

import (
	"context"
	"errors"
)

// Shared-memory links need Linux (memfd, SCM_RIGHTS); elsewhere ModeAuto
// uses tcp for every peer.

var errNoShm = errors.New("shared-memory links need Linux")

type shmListener struct{ addr string }

func newShmListener(*Transport) (*shmListener, error) { return nil, errNoShm }

func (*shmListener) close() {}

func dialShmLink(context.Context, *outConn, string, []byte) (bulkSender, error) { return nil, errNoShm }

// shmByRefFor is never used here: there are no shm links.
func (*Transport) shmByRefFor(int, bool) int { return 0 }
