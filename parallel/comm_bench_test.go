package parallel

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkAllReduce measures in-process ranks over loopback gRPC, per
// codec; `loom bench allreduce` measures separate processes, which is the
// figure to quote.
func BenchmarkAllReduce(b *testing.B) {
	for _, codec := range []Codec{CodecRaw, CodecProto} {
		for _, n := range []int{2} {
			for _, size := range []int{4 << 10, 1 << 20, 16 << 20} {
				b.Run(fmt.Sprintf("codec=%v/ranks=%d/bytes=%d", codec, n, size), func(b *testing.B) {
					c := newCluster(b, n, TransportOptions{Codec: codec})
					gs := c.groups(b, GroupSpec{Name: "g", Ranks: seq(n), Timeout: time.Minute})
					bufs := make([][]float32, n)
					for i := range bufs {
						bufs[i] = make([]float32, size/4)
					}
					ctx := context.Background()
					b.SetBytes(int64(size))
					b.ResetTimer()
					for range b.N {
						noErrors(b, "all-reduce", each(n, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
					}
				})
			}
		}
	}
}
