package parallel

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// benchAllReduce runs all-reduces of size bytes on n in-process ranks and
// reports, besides wall time, the CPU time per operation (all ranks
// together), which the shared machine's load disturbs less.
func benchAllReduce(b *testing.B, n, size int, opts TransportOptions, spec GroupSpec) {
	c := newCluster(b, n, opts)
	if opts.ListenAddr == "unix" {
		c = newUnixCluster(b, n, opts)
	}
	spec.Name, spec.Ranks, spec.Timeout = "g", seq(n), time.Minute
	gs := c.groups(b, spec)
	bufs := make([][]float32, n)
	for i := range bufs {
		bufs[i] = make([]float32, size/4)
	}
	ctx := context.Background()
	b.SetBytes(int64(size))
	b.ResetTimer()
	cpu0 := cpuNanos()
	for range b.N {
		noErrors(b, "all-reduce", each(n, func(i int) error { return gs[i].AllReduce(ctx, bufs[i], Sum) }))
	}
	b.ReportMetric(float64(cpuNanos()-cpu0)/float64(b.N), "cpu-ns/op")
}

// BenchmarkAllReduce compares the codecs. `loom bench allreduce` measures
// separate processes, which is the figure to quote.
func BenchmarkAllReduce(b *testing.B) {
	for _, codec := range []Codec{CodecRaw, CodecProto} {
		for _, size := range []int{4 << 10, 1 << 20, 16 << 20} {
			b.Run(fmt.Sprintf("codec=%v/bytes=%d", codec, size), func(b *testing.B) {
				benchAllReduce(b, 2, size, TransportOptions{Codec: codec}, GroupSpec{})
			})
		}
	}
}

// BenchmarkTransportTuning compares gRPC buffer and window settings.
func BenchmarkTransportTuning(b *testing.B) {
	type cfg struct {
		name string
		o    TransportOptions
		s    GroupSpec
	}
	cfgs := []cfg{
		{"default", TransportOptions{}, GroupSpec{}},
		{"rbuf=none", TransportOptions{ReadBufferBytes: -1}, GroupSpec{}},
		{"rbuf=32K", TransportOptions{ReadBufferBytes: 32 << 10}, GroupSpec{}},
		{"wbuf=none", TransportOptions{WriteBufferBytes: -1}, GroupSpec{}},
		{"wbuf=64K", TransportOptions{WriteBufferBytes: 64 << 10}, GroupSpec{}},
		{"window=1M", TransportOptions{StreamWindowBytes: 1 << 20, ConnWindowBytes: 2 << 20}, GroupSpec{}},
		{"window=1M+chunk=256K", TransportOptions{StreamWindowBytes: 1 << 20, ConnWindowBytes: 2 << 20}, GroupSpec{ChunkBytes: 256 << 10}},
		{"window=2M", TransportOptions{StreamWindowBytes: 2 << 20, ConnWindowBytes: 4 << 20}, GroupSpec{}},
		{"window=2M+chunk=512K", TransportOptions{StreamWindowBytes: 2 << 20, ConnWindowBytes: 4 << 20}, GroupSpec{ChunkBytes: 512 << 10}},
		{"window=512K+chunk=128K", TransportOptions{StreamWindowBytes: 512 << 10, ConnWindowBytes: 1 << 20}, GroupSpec{ChunkBytes: 128 << 10}},
		{"window=256K+chunk=64K", TransportOptions{StreamWindowBytes: 256 << 10, ConnWindowBytes: 512 << 10}, GroupSpec{ChunkBytes: 64 << 10}},
		{"window=1M+chunk=128K", TransportOptions{StreamWindowBytes: 1 << 20, ConnWindowBytes: 2 << 20}, GroupSpec{ChunkBytes: 128 << 10}},
		{"window=1M+chunk=256K+buf=256K", TransportOptions{StreamWindowBytes: 1 << 20, ConnWindowBytes: 2 << 20, ReadBufferBytes: 256 << 10, WriteBufferBytes: 256 << 10}, GroupSpec{ChunkBytes: 256 << 10}},
		{"window=1M+chunk=256K+buf=64K", TransportOptions{StreamWindowBytes: 1 << 20, ConnWindowBytes: 2 << 20, ReadBufferBytes: 64 << 10, WriteBufferBytes: 64 << 10}, GroupSpec{ChunkBytes: 256 << 10}},
		{"window=8M", TransportOptions{StreamWindowBytes: 8 << 20, ConnWindowBytes: 16 << 20}, GroupSpec{}},
		{"chunk=256K", TransportOptions{}, GroupSpec{ChunkBytes: 256 << 10}},
		{"unix-socket", TransportOptions{ListenAddr: "unix"}, GroupSpec{}},
		{"chunk=4M", TransportOptions{}, GroupSpec{ChunkBytes: 4 << 20}},
	}
	for _, c := range cfgs {
		b.Run(c.name, func(b *testing.B) { benchAllReduce(b, 2, 16<<20, c.o, c.s) })
	}
}
