package parallel

import (
	"encoding/binary"
	"math"
	"unsafe"

	"google.golang.org/grpc/mem"
)

// ReduceOp is the element-wise reduction of AllReduce and ReduceScatter.
type ReduceOp int

const (
	// Sum adds.
	Sum ReduceOp = iota
	// Mean adds, then divides by the group size.
	Mean
	// Max takes the maximum; a NaN anywhere gives NaN.
	Max
)

// String returns "sum", "mean" or "max".
func (op ReduceOp) String() string {
	switch op {
	case Sum:
		return "sum"
	case Mean:
		return "mean"
	case Max:
		return "max"
	}
	return "ReduceOp(?)"
}

// ParseReduceOp parses "sum", "mean" or "max".
func ParseReduceOp(s string) (ReduceOp, bool) {
	switch s {
	case "sum":
		return Sum, true
	case "mean":
		return Mean, true
	case "max":
		return Max, true
	}
	return 0, false
}

// apply is what a receiver does with incoming data.
type apply int

const (
	applyCopy apply = iota
	applySum
	applyMax
)

func reduceApply(op ReduceOp) apply {
	if op == Max {
		return applyMax
	}
	return applySum
}

// addToGo sets dst[i] += src[i]: the pure-Go addTo. Unrolled by 8 with the
// bounds checks hoisted so the compiler emits straight-line loads and adds.
func addToGo(dst, src []float32) {
	n := min(len(dst), len(src))
	dst, src = dst[:n], src[:n]
	i := 0
	for ; i+8 <= n; i += 8 {
		d := dst[i : i+8 : i+8]
		s := src[i : i+8 : i+8]
		d[0] += s[0]
		d[1] += s[1]
		d[2] += s[2]
		d[3] += s[3]
		d[4] += s[4]
		d[5] += s[5]
		d[6] += s[6]
		d[7] += s[7]
	}
	for ; i < n; i++ {
		dst[i] += src[i]
	}
}

// addToRef is the obviously correct addTo.
func addToRef(dst, src []float32) {
	for i := range dst {
		dst[i] += src[i]
	}
}

// max32 is max with NaN propagation from either side.
func max32(d, s float32) float32 {
	if s > d || s != s {
		return s
	}
	return d
}

// maxToGo sets dst[i] = max32(dst[i], src[i]): the pure-Go maxTo.
func maxToGo(dst, src []float32) {
	n := min(len(dst), len(src))
	dst, src = dst[:n], src[:n]
	i := 0
	for ; i+4 <= n; i += 4 {
		d := dst[i : i+4 : i+4]
		s := src[i : i+4 : i+4]
		d[0] = max32(d[0], s[0])
		d[1] = max32(d[1], s[1])
		d[2] = max32(d[2], s[2])
		d[3] = max32(d[3], s[3])
	}
	for ; i < n; i++ {
		dst[i] = max32(dst[i], src[i])
	}
}

// maxToRef is the obviously correct maxTo.
func maxToRef(dst, src []float32) {
	for i := range dst {
		if src[i] > dst[i] || math.IsNaN(float64(src[i])) {
			dst[i] = src[i]
		}
	}
}

// scaleGo sets x[i] /= d: the pure-Go scale.
func scaleGo(x []float32, d float32) {
	for i := range x {
		x[i] /= d
	}
}

func applyFloats(a apply, dst, src []float32) {
	switch a {
	case applyCopy:
		copy(dst, src)
	case applySum:
		addTo(dst, src)
	case applyMax:
		maxTo(dst, src)
	}
}

// applyBytes applies little-endian float32 data held in gRPC buffers to
// dst: bufs from byte offset skip on, len(dst)*4 bytes. 4-byte aligned runs
// are used in place; a float split across buffers or a misaligned run goes
// through a small scratch array.
func applyBytes(a apply, dst []float32, bufs mem.BufferSlice, skip int) {
	var carry [4]byte
	nc := 0               // bytes in carry
	di := 0               // next element of dst
	var scratch []float32 // for misaligned runs only: rare
	for _, buf := range bufs {
		b := buf.ReadOnlyData()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b = b[skip:]
		skip = 0
		if nc > 0 {
			k := copy(carry[nc:], b)
			nc += k
			b = b[k:]
			if nc < 4 {
				continue
			}
			v := math.Float32frombits(binary.LittleEndian.Uint32(carry[:]))
			applyFloats(a, dst[di:di+1], []float32{v})
			di++
			nc = 0
		}
		n := min(len(b)/4, len(dst)-di)
		if n > 0 {
			if uintptr(unsafe.Pointer(unsafe.SliceData(b)))%4 == 0 {
				src := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), n)
				applyFloats(a, dst[di:di+n], src)
			} else {
				if scratch == nil {
					scratch = make([]float32, 1024)
				}
				for j := 0; j < n; j += len(scratch) {
					m := min(len(scratch), n-j)
					for k := range m {
						scratch[k] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*(j+k):]))
					}
					applyFloats(a, dst[di+j:di+j+m], scratch[:m])
				}
			}
			di += n
			b = b[4*n:]
		}
		if di == len(dst) {
			return
		}
		nc = copy(carry[:], b)
	}
}
