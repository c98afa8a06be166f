package fast

import "math"

// ceRows is the number of logit rows per cross-entropy task.
const ceRows = 8

// ceTask computes, for each row of its chunk, the log-sum-exp in one pass
// over the row's maximum and then one fused exp-and-sum pass; with a
// gradient it writes g·softmax − g·onehot in a third pass. Each chunk's loss
// lands in part[c] and is summed in chunk order.
type ceTask struct {
	dlogits, logits []float32
	targets         []int32
	rows, vocab     int
	g               float32
	part            []float64
}

func (t *ceTask) run(w *worker, c int) {
	V := t.vocab
	var loss float64
	tmp := w.scratch(V)
	for r := c * ceRows; r < min((c+1)*ceRows, t.rows); r++ {
		tg := int(t.targets[r])
		if tg < 0 {
			if t.dlogits != nil {
				clear(t.dlogits[r*V : (r+1)*V])
			}
			continue
		}
		row := t.logits[r*V : (r+1)*V]
		mx := vmax(row)
		dst := tmp
		if t.dlogits != nil {
			dst = t.dlogits[r*V : (r+1)*V] // may alias row: expSub reads each element before writing it
		}
		xt := row[tg]
		sum := expSub(dst, row, mx)
		loss += float64(mx) + math.Log(float64(sum)) - float64(xt)
		if t.dlogits == nil {
			continue
		}
		// softmax = e^(x−mx)/sum, already in dst.
		scale(dst, t.g/sum)
		dst[tg] -= t.g
	}
	t.part[c] = loss
}

// CrossEntropy implements tensor.Kernels.CrossEntropy, parallel over chunks
// of rows; the losses of chunks are summed in a fixed order.
func (k *Kernels) CrossEntropy(dlogits, logits []float32, targets []int32, rows, vocab int, gradScale float32) float64 {
	counted := 0
	for _, t := range targets[:rows] {
		if t >= 0 {
			counted++
		}
	}
	if counted == 0 {
		if dlogits != nil {
			clear(dlogits[:rows*vocab])
		}
		return 0
	}
	nc := ceilDiv(rows, ceRows)
	t := &k.ce
	*t = ceTask{dlogits, logits, targets, rows, vocab, float32(float64(gradScale) / float64(counted)), k.float64s(nc)}
	k.pool.run(t, nc)
	var loss float64
	for _, p := range t.part {
		loss += p
	}
	*t = ceTask{}
	return loss / float64(counted)
}

// RowMax implements tensor.Kernels.RowMax (AVX-512 where the CPU has it).
func (k *Kernels) RowMax(mx, s []float32, rows, n, ld int) {
	for r := range rows {
		mx[r] = vmax(s[r*ld : r*ld+n])
	}
}

// ExpShiftRows implements tensor.Kernels.ExpShiftRows with the
// attention softmax's vectorized exp (expShiftRows).
func (k *Kernels) ExpShiftRows(sum, s, shift []float32, rows, n, ld int) {
	expShiftRows(s, ld, rows, n, n, shift, sum)
}
