package parallel

// Latency-optimal algorithms for small buffers, and Barrier.

// recursiveDoubling all-reduces in ⌈log2 n⌉ exchange rounds among the
// largest power of two p ≤ n members; the n−p others first fold their
// buffer into a partner and get the result back at the end. Partners add
// in either order, and IEEE addition commutes, so every member ends with
// identical bits.
func (c *call) recursiveDoubling(buf []float32, op ReduceOp) error {
	n, me := c.g.Size(), c.g.me
	a := reduceApply(op)
	p := 1
	for p*2 <= n {
		p *= 2
	}
	rem := n - p
	if me >= p {
		if err := c.sendAll(me-p, buf); err != nil {
			return err
		}
		return c.recvAll(me-p, buf, applyCopy)
	}
	if me < rem {
		if err := c.recvAll(me+p, buf, a); err != nil {
			return err
		}
	}
	for mask := 1; mask < p; mask <<= 1 {
		partner := me ^ mask
		if err := c.sendAll(partner, buf); err != nil {
			return err
		}
		if err := c.recvAll(partner, buf, a); err != nil {
			return err
		}
	}
	if op == Mean {
		scale(buf, n)
	}
	if me < rem {
		return c.sendAll(me+p, buf)
	}
	return nil
}

// broadcast uses a binomial tree (⌈log2 n⌉ rounds) for small buffers and a
// chain pipelined in chunks for large ones.
func (c *call) broadcast(buf []float32, root int) error {
	n := c.g.Size()
	v := (c.g.me - root + n) % n // position relative to the root
	abs := func(v int) int { return (v + root) % n }
	if 4*len(buf) <= c.g.smallBytes() {
		mask := 1
		for ; mask < n; mask <<= 1 {
			if v&mask != 0 {
				if err := c.recvAll(abs(v-mask), buf, applyCopy); err != nil {
					return err
				}
				break
			}
		}
		for mask >>= 1; mask > 0; mask >>= 1 {
			if v+mask < n {
				if err := c.sendAll(abs(v+mask), buf); err != nil {
					return err
				}
			}
		}
		return nil
	}
	// The chain: every receive is posted up front (a non-root's buffer
	// holds nothing yet), and each chunk is forwarded once it is in.
	k := c.chunks(len(buf), true)
	if v > 0 {
		for j := range k {
			off, ln := c.chunkRange(0, len(buf), j)
			c.post(abs(v-1), buf[off:off+ln], applyCopy)
		}
	}
	for j := range k {
		off, ln := c.chunkRange(0, len(buf), j)
		if v > 0 {
			if err := c.wait(abs(v-1), c.req(j)); err != nil {
				return err
			}
		}
		if v+1 < n {
			if err := c.send(abs(v+1), buf[off:off+ln]); err != nil {
				return err
			}
		}
	}
	return nil
}

// barrier is the dissemination barrier: in round k every member signals
// member +2^k and waits for member −2^k; after ⌈log2 n⌉ rounds everyone has
// heard, directly or not, from everyone.
func (c *call) barrier() error {
	n, me := c.g.Size(), c.g.me
	for k := 1; k < n; k <<= 1 {
		if err := c.send((me+k)%n, nil); err != nil {
			return err
		}
		if err := c.recvAll((me-k+n)%n, nil, applyCopy); err != nil {
			return err
		}
	}
	return nil
}
