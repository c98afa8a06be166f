package parallel

// The ring schedule. With n members, step t (0 ≤ t < 2n−2) of an
// all-reduce has member i send segment (i−t−1) mod n to member i+1 and
// receive segment (i−t−2) mod n from member i−1: steps t < n−1 reduce what
// they receive (reduce-scatter; afterwards member i owns segment i), later
// steps copy it (all-gather). The segment received at step t is the one sent
// at step t+1, so each chunk is forwarded as soon as it is reduced: the
// pipeline is one chunk deep per hop, not one segment.

// ringJob is one chunk to send: chunk c of the segment sent at step t.
type ringJob struct {
	t, c int
	done *sendDone
}

// ring runs steps [first, last) of the ring schedule over buf with op.
// ReduceScatter is [0, n−1), AllGather [n−1, 2n−2), AllReduce both. Mean
// divides a member's own segment on the last reduce step.
func (c *call) ring(buf []float32, first, last int, op ReduceOp) error {
	n, me := c.g.Size(), c.g.me
	next, prev := (me+1)%n, (me+n-1)%n
	seg := func(t int) (off, ln int) { // segment sent at step t
		return ShardRange(len(buf), n, ((me-t-1)%n+n)%n)
	}
	steps := last - first
	sent := make([][]*sendDone, steps)
	total := 0
	for t := first; t < last; t++ {
		_, ln := seg(t)
		sent[t-first] = make([]*sendDone, c.chunks(ln, false))
		total += len(sent[t-first])
	}
	queue := make(chan ringJob, total)
	enqueue := func(t, j int) {
		d := newSendDone()
		sent[t-first][j] = d
		queue <- ringJob{t, j, d}
	}
	for j := range sent[0] {
		enqueue(first, j)
	}

	// The sender runs beside the receiver so that writing chunk k overlaps
	// reducing chunk k+1.
	senderErr := make(chan error, 1)
	go func() {
		var err error
		for job := range queue {
			if err != nil {
				job.done.complete()
				continue
			}
			so, sl := seg(job.t)
			off, ln := c.chunkRange(so, sl, job.c)
			if err = c.send(next, buf[off:off+ln], job.done); err != nil {
				c.g.fail(err, true) // wakes the receiver
			}
		}
		senderErr <- err
	}()

	err := func() error {
		for t := first; t < last; t++ {
			a := applyCopy
			if t < n-1 {
				a = reduceApply(op)
			}
			ro, rl := seg(t + 1) // received at t = sent at t+1
			for j := range c.chunks(rl, false) {
				off, ln := c.chunkRange(ro, rl, j)
				if a == applyCopy && t-(n-1) >= first {
					// This chunk left at step t−(n−1); the transport may
					// still be reading it.
					if err := c.waitSent(next, sent[t-(n-1)-first][j]); err != nil {
						return err
					}
				}
				if err := c.recvInto(prev, buf[off:off+ln], a); err != nil {
					return err
				}
				if op == Mean && t == n-2 {
					scale(buf[off:off+ln], n)
				}
				if t+1 < last {
					enqueue(t+1, j)
				}
			}
		}
		return nil
	}()
	close(queue)
	if serr := <-senderErr; err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	// The caller may reuse buf on return.
	for _, ds := range sent {
		for _, d := range ds {
			if err := c.waitSent(next, d); err != nil {
				return err
			}
		}
	}
	return nil
}
