package parallel

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestBucketReducerRows: a gradient buffer reported in descending ranges —
// a dense part in small buckets, then a table of rows — is averaged by
// ReadyRows exactly as by the dense path (Ready over the same ranges): at
// 2 ranks bit for bit, at 4 within float32 rounding; every member has the
// same bits, each element is within rounding of the float64 mean, rows
// zero on every rank stay +0, and only the rows some rank touched (plus a
// flag per row) are all-reduced. The sparsity patterns cover rows shared
// by several ranks, rows one rank alone touched (one of them only by a
// −0), random rows, no row at all and every row; the table is large
// enough that "every row" goes by the ring and the sparse ones by
// recursive doubling. The sparse run also averages two values with the
// flags (ReadyRowsWith).
func TestBucketReducerRows(t *testing.T) {
	const rows, rowLen, dense = 256, 320, 5000
	table := rows * rowLen
	patterns := []struct {
		name string
		// touch fills rank r's rows (in, a rank's whole buffer).
		touch func(rng *rand.Rand, r, n int, in []float32)
	}{
		{"mixed", func(rng *rand.Rand, r, n int, in []float32) {
			for _, row := range []int{3 + r, 10, 20 + 2*r, rows - 1 - r} {
				fillRow(rng, in, row, rowLen)
			}
			switch r {
			case 0:
				in[5*rowLen+7] = 1.5 // row 5: rank 0 alone, one element
			case 1:
				in[40*rowLen] = float32(math.Copysign(0, -1)) // row 40: rank 1 alone, a −0
			}
		}},
		{"random", func(rng *rand.Rand, r, n int, in []float32) {
			for row := range rows {
				if rng.IntN(8) == 0 {
					fillRow(rng, in, row, rowLen)
				}
			}
		}},
		{"one rank", func(rng *rand.Rand, r, n int, in []float32) {
			if r == n-1 {
				for row := 0; row < rows; row += 3 {
					fillRow(rng, in, row, rowLen)
				}
			}
		}},
		{"no row", func(*rand.Rand, int, int, []float32) {}},
		{"every row", func(rng *rand.Rand, r, n int, in []float32) {
			for row := range rows {
				fillRow(rng, in, row, rowLen)
			}
		}},
	}
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprint(n, "ranks"), func(t *testing.T) {
			c := newCluster(t, n, TransportOptions{})
			gs := c.groups(t, GroupSpec{Name: "dp", Ranks: seq(n), Timeout: 20 * time.Second})
			ctx := testCtx(t, 60*time.Second)
			for pi, p := range patterns {
				t.Run(p.name, func(t *testing.T) {
					rng := rand.New(rand.NewPCG(uint64(pi), uint64(n)))
					in := make([][]float32, n)
					for r := range in {
						in[r] = make([]float32, table+dense)
						for i := table; i < len(in[r]); i++ {
							in[r][i] = float32(rng.NormFloat64())
						}
						p.touch(rng, r, n, in[r])
					}
					touched := make([]bool, rows)
					nTouched := 0
					for row := range touched {
						for r := range in {
							touched[row] = touched[row] || anyBits(in[r][row*rowLen:(row+1)*rowLen])
						}
						if touched[row] {
							nTouched++
						}
					}
					want := refReduce(in, Mean)
					means := make([][]float32, n) // ReadyRowsWith's: exact in float32, as is their mean
					run := func(sparse bool) ([][]float32, []ReduceStats) {
						out := make([][]float32, n)
						stats := make([]ReduceStats, n)
						noErrors(t, fmt.Sprintf("reduce (row-sparse %v)", sparse), each(n, func(i int) error {
							buf := append([]float32(nil), in[i]...)
							red := NewBucketReducer(gs[i], buf, 4000) // one dense range per bucket
							red.Start(ctx)
							for hi := len(buf); hi > table; hi -= 1000 {
								red.Ready(max(hi-1000, table), hi)
							}
							if sparse {
								means[i] = []float32{1.5 * float32(i), -float32(i)}
								red.ReadyRowsWith(0, table, rowLen, means[i])
							} else {
								red.Ready(0, table)
							}
							st, err := red.Wait()
							out[i], stats[i] = buf, st
							return err
						}))
						return out, stats
					}
					ref, _ := run(false)
					out, stats := run(true)
					for i := range out {
						if err := closeTo(out[i], want, n); err != nil {
							t.Errorf("member %d: %v", i, err)
						}
						if n == 2 {
							if k := firstDiff(out[i], ref[i]); k >= 0 {
								t.Fatalf("member %d element %d: %v, the dense path gives %v", i, k, out[i][k], ref[i][k])
							}
						} else if err := closeTo(out[i], widen(ref[i]), n); err != nil {
							t.Errorf("member %d against the dense path: %v", i, err)
						}
						if k := firstDiff(out[i], out[0]); k >= 0 {
							t.Fatalf("member %d element %d: %v, member 0 has %v", i, k, out[i][k], out[0][k])
						}
						for k, v := range out[i][:table] {
							if row := k / rowLen; !touched[row] && math.Float32bits(v) != 0 {
								t.Fatalf("member %d: row %d (zero on every rank) element %d is %v, want +0", i, row, k%rowLen, v)
							}
						}
						if m, want := means[i], []float32{0.75 * float32(n-1), -0.5 * float32(n-1)}; m[0] != want[0] || m[1] != want[1] {
							t.Errorf("member %d: ReadyRowsWith's mean is %v, want %v", i, m, want)
						}
						wantBytes := 4 * int64(dense+rows+len(means[i])+nTouched*rowLen)
						if st := stats[i]; st.Bytes != wantBytes || st.Buckets != 6 || st.Sent <= 0 && nTouched > 0 {
							t.Errorf("member %d: %d buckets of %d bytes (%d sent), want 6 of %d (the dense part in 5, the %d touched rows and %d flags in one)",
								i, st.Buckets, st.Bytes, st.Sent, wantBytes, nTouched, rows)
						}
					}
				})
			}
		})
	}
}

// TestNonZero: nonZero sees any set bit, at every position of a row and
// for every row length around its 8-element stride.
func TestNonZero(t *testing.T) {
	for n := range 20 {
		x := make([]float32, n)
		if nonZero(x) {
			t.Fatalf("len %d: all +0 reported non-zero", n)
		}
		for i := range n {
			for _, v := range []float32{float32(math.Copysign(0, -1)), math.SmallestNonzeroFloat32, 1, float32(math.NaN())} {
				x[i] = v
				if !nonZero(x) {
					t.Fatalf("len %d: %v at %d not seen", n, v, i)
				}
				x[i] = 0
			}
		}
	}
}

// TestBucketReducerFailure: a member that never joins fails the others'
// Wait with an error naming it, after the group's timeout.
func TestBucketReducerFailure(t *testing.T) {
	c := newCluster(t, 2, TransportOptions{})
	gs := c.groups(t, GroupSpec{Name: "dp", Ranks: seq(2), Timeout: 300 * time.Millisecond})
	buf := make([]float32, 100)
	red := NewBucketReducer(gs[0], buf, 0)
	red.Start(context.Background())
	red.ReadyRows(0, 100, 10)
	_, err := red.Wait()
	checkPeerError(t, err, 1, c.addrs[1], ErrPeerTimeout)
}

func fillRow(rng *rand.Rand, buf []float32, row, rowLen int) {
	for j := range rowLen {
		buf[row*rowLen+j] = float32(rng.NormFloat64())
	}
}

func anyBits(x []float32) bool {
	for _, v := range x {
		if math.Float32bits(v) != 0 {
			return true
		}
	}
	return false
}

// firstDiff is the first index where a and b differ in bits, or -1.
func firstDiff(a, b []float32) int {
	for k := range a {
		if math.Float32bits(a[k]) != math.Float32bits(b[k]) {
			return k
		}
	}
	return -1
}

func widen(x []float32) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = float64(v)
	}
	return out
}
