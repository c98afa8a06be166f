package gemm

import (
	"fmt"
	"os"
	"testing"
)

// BenchmarkPackBF16 measures the bf16 pair packing of one block as Sgemm
// does for the `small` step's shapes — A: an MC=504-row block, B: a
// 512-column block, each KC=256 deep, for both storage orders, in GB/s
// of float32 source read. The source has a 2048-float row stride. The
// amx cases pack an AMX A block as the derived plan does (MC=672, KC=384).
func BenchmarkPackBF16(b *testing.B) {
	const kc, ld = 256, 2048
	src := make([]float32, 2048*ld)
	for i := range src {
		src[i] = float32(i%977)/977 - 0.5
	}
	dst := make([]uint32, 2048*kc)
	for _, c := range []struct {
		name     string
		a, trans bool
		width, n int
	}{
		{"A/mr=14", true, false, 14, 504}, {"A/mr=14/trans", true, true, 14, 504},
		{"B/nr=32", false, false, 32, 512}, {"B/nr=32/trans", false, true, 32, 512},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if c.a {
					packABF16(dst, c.trans, src, ld, 0, 0, c.n, kc, c.width)
				} else {
					packBBF16(dst, c.trans, src, ld, 0, 0, kc, c.n, c.width)
				}
			}
			b.SetBytes(int64(c.n * kc * 4))
		})
	}
	for _, trans := range []bool{false, true} {
		const mc, kc = 672, 384
		name := "A/amx"
		if trans {
			name += "/trans"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				packAAMX(dst, trans, src, ld, 0, 0, mc, kc)
			}
			b.SetBytes(int64(mc * kc * 4))
		})
	}
}

// BenchmarkStepBF16 times the `small` step's GEMM shapes in bf16 and fp32
// with the derived blocking (LOOM_BENCH_THREADS threads, default 1;
// LOOM_BENCH_SHAPE, e.g. "nn 2048x512x1376", picks one).
func BenchmarkStepBF16(b *testing.B) {
	threads := 1
	if v := os.Getenv("LOOM_BENCH_THREADS"); v != "" {
		fmt.Sscan(v, &threads)
	}
	for _, prec := range []Precision{BF16, FP32} {
		e, err := NewWith(Options{Threads: threads, Precision: prec})
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range stepShapes[9:] {
			if v := os.Getenv("LOOM_BENCH_SHAPE"); v != "" && v != s.String() {
				continue
			}
			b.Run(fmt.Sprintf("%v/%s", prec, s), func(b *testing.B) { benchOne(b, e, s.TransA, s.TransB, s.M, s.N, s.K) })
		}
		e.Close()
	}
}
