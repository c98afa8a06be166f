package parallel

import (
	"bytes"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// split cuts b into buffers of the given sizes (the rest in the last),
// as gRPC's 16 KiB DATA frames would, with a 5-byte prefix offset.
func split(b []byte, first, size int) mem.BufferSlice {
	var out mem.BufferSlice
	for len(b) > 0 {
		n := min(size, len(b))
		if out == nil {
			n = min(first, len(b))
		}
		out = append(out, mem.SliceBuffer(slices.Clone(b[:n])))
		b = b[n:]
	}
	return out
}

func sampleFrame(payload []float32) *wireFrame {
	return &wireFrame{
		kind: loomv1.FrameKind_FRAME_KIND_COLLECTIVE, job: "job-ü", generation: 7, group: "dp0",
		seq: 123456789, tag: 42, srcRank: 3, op: loomv1.CollectiveOp_COLLECTIVE_OP_ALL_REDUCE,
		length: 99, failedRank: -1, cause: loomv1.FailureCause_FAILURE_CAUSE_TIMEOUT, out: payload,
		transport: loomv1.DataTransport_DATA_TRANSPORT_SHM, bootID: "c7916346-ef18", secret: []byte{0, 1, 2, 255},
		shmAddr: "@loom-shm-1",
	}
}

func sameHeader(a, b *wireFrame) bool {
	return a.kind == b.kind && a.job == b.job && a.generation == b.generation && a.group == b.group &&
		a.seq == b.seq && a.tag == b.tag && a.srcRank == b.srcRank && a.op == b.op && a.length == b.length &&
		a.srcAddr == b.srcAddr && a.detail == b.detail && a.failedRank == b.failedRank &&
		a.failedAddr == b.failedAddr && a.cause == b.cause && a.transport == b.transport && a.bootID == b.bootID &&
		bytes.Equal(a.secret, b.secret) && a.shmAddr == b.shmAddr
}

// TestRawCodecRoundTrip encodes with the raw codec and decodes with both
// codecs and with proto.Unmarshal, over many buffer splits: the raw
// encoding is the protobuf encoding of loomv1.Frame.
func TestRawCodecRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	for _, n := range []int{0, 1, 3, 1000, inlineBytes/4 + 1, 20000} {
		payload := randBuf(rng, n)
		in := sampleFrame(payload)
		enc, err := rawCodec{}.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		wire := enc.Materialize()
		if in.sent != nil {
			enc.Free()
			<-in.sent.done // freeing the payload buffer completes the send
		}
		if n > 0 && (grpcPrefixLen+len(wire)-4*n)%4 != 0 {
			t.Errorf("n=%d: payload not 4-byte aligned after the gRPC prefix", n)
		}
		var pm loomv1.Frame
		if err := proto.Unmarshal(wire, &pm); err != nil {
			t.Fatalf("n=%d: proto.Unmarshal of raw encoding: %v", n, err)
		}
		if pm.Seq != in.seq || pm.Job != in.job || pm.FailedRank != -1 || len(pm.Payload) != 4*n ||
			pm.Transport != in.transport || pm.ShmAddr != in.shmAddr || !bytes.Equal(pm.Secret, in.secret) {
			t.Fatalf("n=%d: proto decode differs: %v", n, &pm)
		}
		for _, first := range []int{1, 7, 16379, 1 << 30} {
			for _, size := range []int{1, 5, 16384} {
				if size == 1 && n > 1000 {
					continue
				}
				for _, c := range []interface {
					Unmarshal(mem.BufferSlice, any) error
				}{rawCodec{}, protoCodec{}} {
					var out wireFrame
					if err := c.Unmarshal(split(wire, first, size), &out); err != nil {
						t.Fatalf("n=%d split %d/%d: %v", n, first, size, err)
					}
					if !sameHeader(in, &out) {
						t.Fatalf("n=%d split %d/%d %T: header %+v, want %+v", n, first, size, c, out, *in)
					}
					got := make([]float32, n)
					if out.inLen != 4*n {
						t.Fatalf("n=%d: payload %d bytes", n, out.inLen)
					}
					if n > 0 {
						applyBytes(applyCopy, got, out.in, out.inSkip)
					}
					if !slices.Equal(got, payload) {
						t.Fatalf("n=%d split %d/%d %T: payload differs", n, first, size, c)
					}
					out.release()
				}
			}
		}
	}
}

// TestApplyBytesMisaligned feeds payload bytes split at every offset, with
// misaligned buffer starts, to every apply kind.
func TestApplyBytesMisaligned(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	src := randBuf(rng, 2100)
	raw := append([]byte{0, 0, 0}, floatBytes(src)...)
	for _, a := range []apply{applyCopy, applySum, applyMax} {
		for _, first := range []int{3, 4, 5, 6, 100, 4099, 8403} {
			for _, size := range []int{1, 2, 3, 7, 4096, 5003} {
				dst := randBuf(rng, len(src))
				want := slices.Clone(dst)
				applyFloats(a, want, src)
				bufs := split(raw, first, size)
				// misalign: re-slice each buffer from an odd base
				for i, b := range bufs {
					m := make([]byte, b.Len()+1)
					copy(m[1:], b.ReadOnlyData())
					bufs[i] = mem.SliceBuffer(m[1:])
				}
				applyBytes(a, dst, bufs, 3)
				if !slices.Equal(dst, want) {
					t.Fatalf("apply %d split %d/%d: wrong result", a, first, size)
				}
			}
		}
	}
}

// TestKernels checks the unrolled kernels against the reference ones on
// odd lengths.
func TestKernels(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, n := range []int{0, 1, 3, 7, 8, 9, 15, 63, 64, 65, 1000} {
		a, b := randBuf(rng, n), randBuf(rng, n)
		if n > 2 {
			b[1] = float32(math.NaN())
			a[2] = float32(math.NaN())
		}
		got, want := slices.Clone(a), slices.Clone(a)
		addTo(got, b)
		addToRef(want, b)
		if !bitsEqual(got, want) {
			t.Errorf("addTo n=%d differs from reference", n)
		}
		got, want = slices.Clone(a), slices.Clone(a)
		maxTo(got, b)
		maxToRef(want, b)
		if !bitsEqual(got, want) {
			t.Errorf("maxTo n=%d differs from reference", n)
		}
	}
}

func bitsEqual(a, b []float32) bool {
	return slices.EqualFunc(a, b, func(x, y float32) bool { return math.Float32bits(x) == math.Float32bits(y) || (x != x && y != y) })
}

func TestShardRange(t *testing.T) {
	for _, length := range []int{0, 1, 5, 7, 64, 1001} {
		for _, parts := range []int{1, 2, 3, 8} {
			next := 0
			for i := range parts {
				off, n := ShardRange(length, parts, i)
				if off != next || n < length/parts || n > length/parts+1 {
					t.Fatalf("ShardRange(%d,%d,%d) = %d,%d", length, parts, i, off, n)
				}
				next = off + n
			}
			if next != length {
				t.Fatalf("ShardRange(%d,%d) covers %d", length, parts, next)
			}
		}
	}
}

// FuzzRawDecode: the raw decoder must never panic on outside bytes, and
// whatever it accepts must agree with proto.Unmarshal.
func FuzzRawDecode(f *testing.F) {
	for _, n := range []int{0, 2, 300} {
		enc, _ := rawCodec{}.Marshal(sampleFrame(make([]float32, n)))
		f.Add(enc.Materialize(), 3)
	}
	f.Add([]byte{0x7a, 0xff, 0xff, 0xff, 0xff, 0x0f}, 1)
	f.Fuzz(func(t *testing.T, b []byte, cut int) {
		if cut < 1 {
			cut = 1
		}
		var out wireFrame
		err := rawCodec{}.Unmarshal(split(b, cut, 16384), &out)
		if err != nil {
			return
		}
		defer out.release()
		var pm loomv1.Frame
		if proto.Unmarshal(b, &pm) != nil {
			return // e.g. invalid UTF-8, which the raw decoder does not check
		}
		if out.seq != pm.Seq || out.job != pm.Job || out.group != pm.Group || out.inLen != len(pm.Payload) {
			t.Fatalf("raw decode %+v disagrees with proto %v", out, &pm)
		}
		if out.inLen > 0 {
			got := make([]byte, out.inLen)
			all := out.in.Materialize()
			copy(got, all[out.inSkip:])
			if !slices.Equal(got, pm.Payload) {
				t.Fatal("payload differs from proto's")
			}
		}
	})
}

// TestRawCodecPoolsSmallMessages checks that a message with an inline
// payload is built in a pooled buffer that gRPC's Free returns, and that
// the next message reuses it, with the same bytes as an unpooled encoding.
func TestRawCodecPoolsSmallMessages(t *testing.T) {
	pool := newFramePool(inlineBufBytes)
	c := rawCodec{small: pool}
	rng := rand.New(rand.NewPCG(7, 7))
	for _, n := range []int{0, 5, inlineBytes / 4} {
		in := sampleFrame(randBuf(rng, n))
		enc, err := c.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := rawCodec{}.Marshal(sampleFrame(in.out))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc.Materialize(), plain.Materialize()) {
			t.Fatalf("n=%d: pooled encoding differs from the plain one", n)
		}
		enc.Free()
		if got := len(pool.free); got != 1 {
			t.Fatalf("n=%d: %d buffers in the pool after Free, want 1", n, got)
		}
		again, err := c.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := len(pool.free); got != 0 {
			t.Fatalf("n=%d: the next message left %d buffers in the pool, want it to take the one there", n, got)
		}
		again.Free()
	}
	// Names too long for a pooled buffer get one of their own.
	in := sampleFrame(randBuf(rng, 10))
	in.detail = strings.Repeat("x", inlineBufBytes)
	enc, err := c.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	enc.Free()
	if got := len(pool.free); got != 1 {
		t.Fatalf("%d buffers in the pool after an oversized message, want the 1 from before", got)
	}
}
