package safetensors

import "math"

// DType is a safetensors element type as spelled in the header ("F32", "BF16", ...).
type DType string

// Element types defined by the safetensors format. Only F32, F16 and BF16
// convert to float32; the others are parsed and validated but reading them as
// float32 fails with ErrUnsupportedDType.
const (
	BOOL    DType = "BOOL"
	U8      DType = "U8"
	I8      DType = "I8"
	F8E5M2  DType = "F8_E5M2"
	F8E4M3  DType = "F8_E4M3"
	F8E8M0  DType = "F8_E8M0"
	I16     DType = "I16"
	U16     DType = "U16"
	F16     DType = "F16"
	BF16    DType = "BF16"
	I32     DType = "I32"
	U32     DType = "U32"
	F32     DType = "F32"
	F64     DType = "F64"
	I64     DType = "I64"
	U64     DType = "U64"
	C64     DType = "C64"
	dtypeF4 DType = "F4" // sub-byte; recognised only to give a precise error
)

// Size returns the number of bytes per element and whether d is a
// byte-addressable dtype this package understands.
func (d DType) Size() (int, bool) {
	switch d {
	case BOOL, U8, I8, F8E5M2, F8E4M3, F8E8M0:
		return 1, true
	case I16, U16, F16, BF16:
		return 2, true
	case I32, U32, F32:
		return 4, true
	case F64, I64, U64, C64:
		return 8, true
	}
	return 0, false
}

// isFloat32Convertible reports whether ReadFloat32 accepts d.
func (d DType) isFloat32Convertible() bool {
	return d == F32 || d == F16 || d == BF16
}

// F16ToFloat32 converts an IEEE 754 binary16 bit pattern to float32 exactly.
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch exp {
	case 0x1f: // Inf or NaN; the payload is preserved.
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case 0: // zero or subnormal: mant × 2^-24, exact in float32
		v := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			return -v
		}
		return v
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// Float32ToF16 converts f to the nearest binary16 value, ties to even;
// values beyond the binary16 range become ±Inf and NaNs stay NaN.
func Float32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00 | uint16(mant>>13) // quiet NaN
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign // below half the smallest subnormal
		}
		m := mant | 0x800000
		shift := uint32(14 - e)
		h := m >> shift
		rem := m & (1<<shift - 1)
		halfway := uint32(1) << (shift - 1)
		if rem > halfway || (rem == halfway && h&1 == 1) {
			h++ // may carry into the smallest normal, which is the right encoding
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // may carry into Inf, which is the right encoding
	}
	return sign | uint16(h)
}

// BF16ToFloat32 converts a bfloat16 bit pattern to float32 exactly.
func BF16ToFloat32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// Float32ToBF16 converts f to the nearest bfloat16 value, ties to even; NaNs stay NaN.
func Float32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40 // quiet NaN, never rounds to Inf
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}
