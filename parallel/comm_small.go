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

// direct all-reduces in one hop, for small buffers in groups of 3 or more:
// every member posts a receive for each other member's whole buffer, sends
// its own to each of them, and once all n−1 are in reduces the n
// contributions in rank order, ((b0 ⊕ b1) ⊕ b2) ⊕ …, so every member
// computes the same bits. Recursive doubling needs ⌈log2 n⌉ dependent
// hops (more when n is not a power of two), each waiting for the partner
// to be scheduled; with more ranks than cores every hop pays a switch,
// while here a member that runs after the others finds everything waiting.
// The price is n−1 times the buffer sent and received per member, and
// (n−1)·len(buf) elements of scratch kept by the group, so Auto uses it
// only for small buffers (see directBytes).
func (c *call) direct(buf []float32, op ReduceOp) error {
	g := c.g
	n, me, ln := g.Size(), g.me, len(buf)
	need := (n - 1) * ln
	if cap(g.scratch) < need {
		g.scratch = make([]float32, need)
	}
	scratch := g.scratch[:need]
	slot := func(i int) []float32 { // peer i's contribution
		j := i
		if i > me {
			j--
		}
		return scratch[j*ln : (j+1)*ln]
	}
	// Post every receive first (the scratch is not what we send), so that
	// a link reader moves each frame straight into its slot.
	k := c.chunks(ln, true)
	first := c.nreq
	for d := 1; d < n; d++ {
		i := (me - d + n) % n
		dst := slot(i)
		for j := range k {
			off, m := c.chunkRange(0, ln, j)
			c.post(i, dst[off:off+m], applyCopy)
		}
	}
	for d := 1; d < n; d++ {
		i := (me + d) % n
		for j := range k {
			off, m := c.chunkRange(0, ln, j)
			if err := c.send(i, buf[off:off+m]); err != nil {
				return err
			}
		}
	}
	if err := c.waitSends(); err != nil {
		return err
	}
	r := first
	for d := 1; d < n; d++ {
		i := (me - d + n) % n
		for range k {
			if err := c.wait(i, c.req(r)); err != nil {
				return err
			}
			r++
		}
	}
	a := reduceApply(op)
	if me == 0 {
		for i := 1; i < n; i++ {
			applyFloats(a, buf, slot(i))
		}
	} else {
		acc := slot(0)
		for i := 1; i < n; i++ {
			src := buf
			if i != me {
				src = slot(i)
			}
			applyFloats(a, acc, src)
		}
		copy(buf, acc)
	}
	if op == Mean {
		scale(buf, n)
	}
	return nil
}
