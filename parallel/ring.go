package parallel

// The ring schedule. With n members, step t (0 ≤ t < 2n−2) of an
// all-reduce has member i send segment (i−t−1) mod n to member i+1 and
// receive segment (i−t−2) mod n from member i−1: steps t < n−1 reduce what
// they receive (reduce-scatter; afterwards member i owns segment i), later
// steps copy it (all-gather). The segment received at step t is the one sent
// at step t+1, so each chunk is forwarded as soon as it is reduced: the
// pipeline is one chunk deep per hop, not one segment.
//
// Receives are posted early, so that each frame lands in its final place
// the moment it arrives: every reduce-scatter receive before the first
// send (it reduces into a segment this member has not sent yet), and an
// all-gather receive as soon as the send of the chunk it overwrites has
// returned. The incoming frame causally follows the next member's read of
// that chunk (its values include ours), so the sends are lazy: gRPC may
// still reference the chunk, and shm by reference returns before the
// peer has read it (sendLazy) so that a member publishes its next chunk
// at once instead of waiting for each acknowledgement; the call waits for
// them all before it returns. Posting after the send, from the same
// goroutine, also makes the order visible to the race detector, which
// cannot see causality that runs through another process's shared memory.

// ring runs steps [first, last) of the ring schedule over buf with op.
// ReduceScatter is [0, n−1), AllGather [n−1, 2n−2), AllReduce both. Mean
// divides a member's own segment on the last reduce step.
func (c *call) ring(buf []float32, first, last int, op ReduceOp) error {
	n, me := c.g.Size(), c.g.me
	next, prev := (me+1)%n, (me+n-1)%n
	seg := func(t int) (off, ln int) { // segment sent at step t
		return ShardRange(len(buf), n, ((me-t-1)%n+n)%n)
	}
	// postRecvs posts the receives of step t: into the segment sent at t+1.
	postRecvs := func(t int, only int) {
		a := applyCopy
		if t < n-1 {
			a = reduceApply(op)
		}
		ro, rl := seg(t + 1)
		for j := range c.chunks(rl, false) {
			if only < 0 || j == only {
				off, ln := c.chunkRange(ro, rl, j)
				c.post(prev, buf[off:off+ln], a)
			}
		}
	}
	// send sends chunk j of step t and posts the all-gather receive that
	// overwrites it, at step t+n−1.
	send := func(t, j int) error {
		so, sl := seg(t)
		off, ln := c.chunkRange(so, sl, j)
		if err := c.sendLazy(next, buf[off:off+ln]); err != nil {
			return err
		}
		if u := t + n - 1; u >= n-1 && u < last {
			postRecvs(u, j)
		}
		return nil
	}
	for t := first; t < last; t++ {
		if t < n-1 || t+1-n < first { // never sent by this call
			postRecvs(t, -1)
		}
	}
	_, sl := seg(first)
	for j := range c.chunks(sl, false) {
		if err := send(first, j); err != nil {
			return err
		}
	}
	// Receives complete in post order, which is the order of (step, chunk).
	k := 0
	for t := first; t < last; t++ {
		ro, rl := seg(t + 1)
		for j := range c.chunks(rl, false) {
			if err := c.wait(prev, c.req(k)); err != nil {
				return err
			}
			k++
			if op == Mean && t == n-2 {
				off, ln := c.chunkRange(ro, rl, j)
				scale(buf[off:off+ln], n)
			}
			if t+1 < last {
				if err := send(t+1, j); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
