package parallel

// Halving-doubling (Rabenseifner): a reduce-scatter by recursive halving,
// then an all-gather by recursive doubling, for groups whose size n is a
// power of two. The buffer is cut into n blocks by ShardRange. Before the
// halving step with mask m (n/2, n/4, …, 1) a member holds a span of 2m
// blocks; it keeps the half whose position matches its own bit m (the
// lower half when me&m == 0), sends the other half to member me^m and
// reduces that member's copy of the half it keeps into its own. After the
// last step member i holds the reduced block i, so ReduceScatter can stop
// there (the shards are the ring's). The doubling steps run the masks
// back up (1, 2, …, n/2): a member sends what it holds to me^m and
// receives the partner's half beside it.
//
// Why: both algorithms send 2(n−1)/n of the buffer per member, but the
// ring takes 2(n−1) steps and halving-doubling 2·log2 n. Every step costs
// a hop's latency: a network round, a doorbell wake-up and, where ranks
// outnumber cores, the wait for a core. With the bytes equal, fewer steps
// is never worse in the α–β model. Measured, it did not clearly win: at 4
// ranks on 2 cores (shm, three sets of 5–8 alternating rounds on a loaded
// VM, medians of the slowest rank's p50) 1 MiB was 5–7% faster than the
// ring and 4 MiB between 4% faster and 18% slower, 64–256 KiB 15–35%
// slower; over tcp 1 MiB 33% faster, 4 MiB 13% slower. The hops are
// fewer, but a halving step needs both partners to have finished the
// step before, where a ring step needs only its predecessor, and with
// more ranks than cores each of those waits is a wait for a core. Those
// figures predate the bells and polling waits (see bellBoard); measured
// again after them, it wins over tcp from 256 KiB and over shm from 2 MiB,
// and Auto runs it there (Group.allReduceAlgorithm; the package doc has
// the figures). For n not a power of two
// it would have to fold the extra members in first, sending the whole
// buffer once more; such groups run the ring.
//
// Reduction order, fixed per (n, length): each element of block b is
// reduced at exactly one member per step, as own + partner's, along the
// binary tree of the masks (at n = 4: (x0+x2)+(x1+x3) for blocks 0 and 2,
// (x1+x3)+(x0+x2) for 1 and 3, equal bit for bit since IEEE addition
// commutes), and then copied; every member therefore ends with the bits of
// the one member that reduced it, identical everywhere and from run to
// run.
//
// Frames: within a step, the partner's half is received in chunks posted
// into the kept half (which this member does not send), and the sent
// half's doubling receive is posted after them (receives from one peer
// match in post order), once the half is out. Sends are lazy as in the ring: the only later write into a sent
// span is the doubling frame from the same partner, whose values include
// ours. A halving step's two halves were both reduced by the step before:
// it sends its half as soon as the receives covering it are in, and posts
// its own receives into the kept half only once the step before has
// finished reducing there (two links never reduce into the same memory).

// hdMaxSteps bounds log2 of a group's size (ranks are < 2^31).
const hdMaxSteps = 32

// isPow2 reports whether n is a power of two.
func isPow2(n int) bool { return n > 0 && n&(n-1) == 0 }

// hdStep is one halving step's record, kept for the doubling step that
// reverses it.
type hdStep struct {
	partner            int
	keepOff, keepLen   int // what this member keeps (and sends back when doubling)
	sendOff, sendLen   int // what it sends (and receives back when doubling)
	agFirst, agN       int // the doubling receives into the sent half: c.req(agFirst…)
	rsFirst, rsN, rsAt int // the halving receives into the kept half; rsAt: those waited for
}

// halvingDoubling runs halving (reduce-scatter) when rs and doubling
// (all-gather) when ag over buf, n a power of two. With op Mean the own
// block is divided after the last halving step.
func (c *call) halvingDoubling(buf []float32, op ReduceOp, rs, ag bool) error {
	n, me := c.g.Size(), c.g.me
	var steps [hdMaxSteps]hdStep
	span := func(b0, nb int) (off, ln int) { // blocks [b0, b0+nb)
		off, _ = ShardRange(len(buf), n, b0)
		end, last := ShardRange(len(buf), n, b0+nb-1)
		return off, end + last - off
	}
	// The plan: masks n/2 … 1, the span held before each step.
	k := 0
	lo := 0 // first block of the span held
	for m := n / 2; m >= 1; m /= 2 {
		s := &steps[k]
		s.partner = me ^ m
		keep, send := lo, lo+m
		if me&m != 0 {
			keep, send = lo+m, lo
		}
		s.keepOff, s.keepLen = span(keep, m)
		s.sendOff, s.sendLen = span(send, m)
		lo = keep
		k++
	}
	// postAG posts the doubling receives of step s (its sent half, copied).
	postAG := func(s *hdStep) {
		s.agFirst, s.agN = c.nreq, c.chunks(s.sendLen, false)
		for j := range s.agN {
			off, ln := c.chunkRange(s.sendOff, s.sendLen, j)
			c.post(s.partner, buf[off:off+ln], applyCopy)
		}
	}
	// waitRS waits for step s's halving receives that start before end.
	waitRS := func(s *hdStep, end int) error {
		for ; s.rsAt < s.rsN; s.rsAt++ {
			if off, _ := c.chunkRange(s.keepOff, s.keepLen, s.rsAt); off >= end {
				return nil
			}
			if err := c.wait(s.partner, c.req(s.rsFirst+s.rsAt)); err != nil {
				return err
			}
		}
		return nil
	}
	if rs {
		a := reduceApply(op)
		// postRS posts step s's halving receives (into its kept half).
		postRS := func(s *hdStep) {
			s.rsFirst, s.rsN, s.rsAt = c.nreq, c.chunks(s.keepLen, false), 0
			for j := range s.rsN {
				off, ln := c.chunkRange(s.keepOff, s.keepLen, j)
				c.post(s.partner, buf[off:off+ln], a)
			}
		}
		// sendRS sends step s's other half.
		sendRS := func(s *hdStep) error {
			for j := range c.chunks(s.sendLen, false) {
				off, ln := c.chunkRange(s.sendOff, s.sendLen, j)
				if err := c.sendLazy(s.partner, buf[off:off+ln]); err != nil {
					return err
				}
			}
			return nil
		}
		for i := range k {
			s := &steps[i]
			if i == 0 {
				postRS(s)
				if err := sendRS(s); err != nil {
					return err
				}
				if ag {
					postAG(s)
				}
				continue
			}
			// Both halves were reduced by step i−1, whose receives
			// complete from the lower end up: take the lower half first.
			// A receive may be posted into the kept half only once the
			// step before has finished reducing into it (two links must
			// never reduce into the same memory at once).
			prev := &steps[i-1]
			if s.sendOff < s.keepOff {
				if err := waitRS(prev, s.sendOff+s.sendLen); err != nil {
					return err
				}
				if err := sendRS(s); err != nil {
					return err
				}
				if err := waitRS(prev, len(buf)); err != nil {
					return err
				}
				postRS(s)
			} else {
				if err := waitRS(prev, s.keepOff+s.keepLen); err != nil {
					return err
				}
				postRS(s)
				if err := waitRS(prev, len(buf)); err != nil {
					return err
				}
				if err := sendRS(s); err != nil {
					return err
				}
			}
			// Receives from one peer match in post order: the doubling
			// receive (the partner's later frame) after the halving one.
			if ag {
				postAG(s)
			}
		}
		if k > 0 {
			if err := waitRS(&steps[k-1], len(buf)); err != nil {
				return err
			}
		}
		if op == Mean {
			off, ln := ShardRange(len(buf), n, me)
			scale(buf[off:off+ln], n)
		}
	} else if ag { // a plain all-gather: nothing of ours is sent from these spans
		for i := range k {
			postAG(&steps[i])
		}
	}
	if !ag {
		return nil
	}
	for i := k - 1; i >= 0; i-- {
		s := &steps[i]
		for j := range c.chunks(s.keepLen, false) {
			off, ln := c.chunkRange(s.keepOff, s.keepLen, j)
			if err := c.sendLazy(s.partner, buf[off:off+ln]); err != nil {
				return err
			}
		}
		for j := range s.agN {
			if err := c.wait(s.partner, c.req(s.agFirst+j)); err != nil {
				return err
			}
		}
	}
	return nil
}
