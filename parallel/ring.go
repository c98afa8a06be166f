package parallel

// The ring schedule. With n members, step t (0 ≤ t < 2n−2) of an
// all-reduce has member i send segment (i−t−1) mod n to member i+1 and
// receive segment (i−t−2) mod n from member i−1: steps t < n−1 reduce what
// they receive (reduce-scatter; afterwards member i owns segment i), later
// steps copy it (all-gather). The segment received at step t is the one sent
// at step t+1, so each chunk is forwarded as soon as it is reduced: the
// pipeline is one chunk deep per hop, not one segment.
//
// Every receive of the call is posted before the first send, so each
// frame lands in its final place the moment it arrives, whichever step it
// belongs to. That is safe: a reduce-scatter step reduces into a segment
// this member has not sent yet, and an all-gather step overwrites a
// segment whose earlier send the incoming frame causally follows (its
// value went around the ring through this member's send).

// ring runs steps [first, last) of the ring schedule over buf with op.
// ReduceScatter is [0, n−1), AllGather [n−1, 2n−2), AllReduce both. Mean
// divides a member's own segment on the last reduce step.
func (c *call) ring(buf []float32, first, last int, op ReduceOp) error {
	n, me := c.g.Size(), c.g.me
	next, prev := (me+1)%n, (me+n-1)%n
	seg := func(t int) (off, ln int) { // segment sent at step t
		return ShardRange(len(buf), n, ((me-t-1)%n+n)%n)
	}
	for t := first; t < last; t++ {
		a := applyCopy
		if t < n-1 {
			a = reduceApply(op)
		}
		ro, rl := seg(t + 1) // received at t = sent at t+1
		for j := range c.chunks(rl, false) {
			off, ln := c.chunkRange(ro, rl, j)
			c.post(prev, buf[off:off+ln], a)
		}
	}
	so, sl := seg(first)
	for j := range c.chunks(sl, false) {
		off, ln := c.chunkRange(so, sl, j)
		if err := c.send(next, buf[off:off+ln]); err != nil {
			return err
		}
	}
	k := 0
	for t := first; t < last; t++ {
		ro, rl := seg(t + 1)
		for j := range c.chunks(rl, false) {
			if err := c.wait(prev, c.req(k)); err != nil {
				return err
			}
			k++
			off, ln := c.chunkRange(ro, rl, j)
			if op == Mean && t == n-2 {
				scale(buf[off:off+ln], n)
			}
			if t+1 < last {
				if err := c.send(next, buf[off:off+ln]); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
