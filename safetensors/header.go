package safetensors

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"unicode/utf8"
)

// MaxHeaderSize bounds the JSON header length accepted by the reader. The
// Hugging Face reference implementation uses the same 100 MB cap; a larger
// length means a corrupt or hostile file, not a big model.
const MaxHeaderSize = 100 << 20

// metadataKey is the reserved header key holding free-form string metadata.
const metadataKey = "__metadata__"

// TensorInfo describes one tensor in a file. Begin and End are byte offsets
// relative to the start of the data buffer (after the header).
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int64
	Begin int64
	End   int64
}

// NumElements returns the product of Shape (1 for a scalar).
func (t TensorInfo) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// header is the validated content of a safetensors header.
type header struct {
	tensors  []TensorInfo // in header order
	metadata map[string]string
}

// parseHeader validates hdr, the JSON header of file src whose data buffer is
// bufLen bytes long. All per-tensor problems are reported together.
func parseHeader(src string, hdr []byte, bufLen int64) (header, error) {
	ferr := func(field, format string, args ...any) error {
		return &Error{File: src, Field: field, Msg: fmt.Sprintf(format, args...), Err: ErrFormat}
	}
	if !utf8.Valid(hdr) {
		return header{}, ferr("header", "JSON header is not valid UTF-8; the file is corrupt or not safetensors")
	}
	if len(hdr) == 0 || hdr[0] != '{' {
		return header{}, ferr("header", "JSON header must start with '{'; the file is corrupt or not safetensors")
	}
	keys, vals, err := readObject(hdr)
	if err != nil {
		return header{}, ferr("header", "invalid JSON: %v", err)
	}
	var h header
	var errs errList
	seen := make(map[string]bool, len(keys))
	for i, key := range keys {
		if seen[key] {
			errs.add(&Error{File: src, Tensor: key, Msg: "name appears more than once in the header; names must be unique", Err: ErrFormat})
			continue
		}
		seen[key] = true
		if key == metadataKey {
			md, err := parseMetadata(vals[i])
			if err != nil {
				errs.add(ferr(metadataKey, "%v", err))
			}
			h.metadata = md
			continue
		}
		t, err := parseTensor(src, key, vals[i])
		if err != nil {
			errs.add(err)
			continue
		}
		h.tensors = append(h.tensors, t)
	}
	if err := errs.err(src); err != nil {
		return header{}, err
	}
	if err := checkCoverage(src, h.tensors, bufLen); err != nil {
		return header{}, err
	}
	return h, nil
}

// readObject splits a JSON object into its keys and raw values in order,
// keeping duplicate keys (which encoding/json would silently merge) so the
// caller can reject them. Anything but whitespace after the object is an error.
func readObject(b []byte) ([]string, []json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, nil, fmt.Errorf("expected a JSON object, found %v", tok)
	}
	var keys []string
	var vals []json.RawMessage
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, nil, fmt.Errorf("expected an object key, found %v", tok)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, fmt.Errorf("value of %q: %w", key, err)
		}
		keys = append(keys, key)
		vals = append(vals, v)
	}
	if _, err := dec.Token(); err != nil { // closing '}'
		return nil, nil, err
	}
	rest := b[dec.InputOffset():]
	if len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return nil, nil, fmt.Errorf("unexpected data after the JSON object at byte %d", dec.InputOffset())
	}
	return keys, vals, nil
}

// parseMetadata decodes the __metadata__ value: null or an object of strings.
func parseMetadata(raw json.RawMessage) (map[string]string, error) {
	if string(raw) == "null" {
		return nil, nil
	}
	if len(raw) == 0 || raw[0] != '{' {
		return nil, fmt.Errorf("must be an object of string values, found %.40s", raw)
	}
	keys, vals, err := readObject(raw)
	if err != nil {
		return nil, err
	}
	md := make(map[string]string, len(keys))
	for i, k := range keys {
		if _, dup := md[k]; dup {
			return nil, fmt.Errorf("key %q appears more than once", k)
		}
		if len(vals[i]) == 0 || vals[i][0] != '"' {
			return nil, fmt.Errorf("value of %q must be a string, found %.40s", k, vals[i])
		}
		var s string
		if err := json.Unmarshal(vals[i], &s); err != nil {
			return nil, fmt.Errorf("value of %q: %v", k, err)
		}
		md[k] = s
	}
	return md, nil
}

// parseTensor decodes and checks one tensor entry, except for its position
// relative to other tensors (see checkCoverage).
func parseTensor(src, name string, raw json.RawMessage) (TensorInfo, error) {
	ferr := func(field, format string, args ...any) error {
		return &Error{File: src, Tensor: name, Field: field, Msg: fmt.Sprintf(format, args...), Err: ErrFormat}
	}
	t := TensorInfo{Name: name}
	if len(raw) == 0 || raw[0] != '{' {
		return t, ferr("", "entry must be an object with dtype, shape and data_offsets, found %.40s", raw)
	}
	keys, vals, err := readObject(raw)
	if err != nil {
		return t, ferr("", "invalid entry: %v", err)
	}
	var have [3]bool
	var dtypeRaw, shapeRaw, offRaw json.RawMessage
	for i, k := range keys {
		var slot int
		switch k {
		case "dtype":
			slot, dtypeRaw = 0, vals[i]
		case "shape":
			slot, shapeRaw = 1, vals[i]
		case "data_offsets":
			slot, offRaw = 2, vals[i]
		default:
			return t, ferr(k, "unknown field; allowed fields are dtype, shape and data_offsets")
		}
		if have[slot] {
			return t, ferr(k, "field appears more than once")
		}
		have[slot] = true
	}
	for i, f := range []string{"dtype", "shape", "data_offsets"} {
		if !have[i] {
			return t, ferr(f, "required field is missing")
		}
	}

	if len(dtypeRaw) == 0 || dtypeRaw[0] != '"' {
		return t, ferr("dtype", "must be a string such as \"F32\", found %.40s", dtypeRaw)
	}
	var dt string
	if err := json.Unmarshal(dtypeRaw, &dt); err != nil {
		return t, ferr("dtype", "%v", err)
	}
	t.DType = DType(dt)
	size, ok := t.DType.Size()
	if !ok {
		if t.DType == dtypeF4 || t.DType == "F6_E2M3" || t.DType == "F6_E3M2" {
			return t, ferr("dtype", "sub-byte dtype %q is not supported", dt)
		}
		return t, ferr("dtype", "unknown dtype %q; known: BOOL U8 I8 F8_E5M2 F8_E4M3 F8_E8M0 I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64 C64", dt)
	}

	dims, err := parseIntArray(shapeRaw)
	if err != nil {
		return t, ferr("shape", "%v", err)
	}
	t.Shape = dims
	numel := uint64(1)
	for _, d := range dims {
		hi, lo := bits.Mul64(numel, uint64(d))
		if hi != 0 || lo > 1<<62 {
			return t, ferr("shape", "%v has too many elements", dims)
		}
		numel = lo
	}
	hi, nbytes := bits.Mul64(numel, uint64(size))
	if hi != 0 || nbytes > 1<<62 {
		return t, ferr("shape", "%v of %s is too many bytes", dims, t.DType)
	}

	offs, err := parseIntArray(offRaw)
	if err != nil {
		return t, ferr("data_offsets", "%v", err)
	}
	if len(offs) != 2 {
		return t, ferr("data_offsets", "must be [begin, end], found %d numbers", len(offs))
	}
	t.Begin, t.End = offs[0], offs[1]
	if t.End < t.Begin {
		return t, ferr("data_offsets", "end %d is before begin %d", t.End, t.Begin)
	}
	if uint64(t.End-t.Begin) != nbytes {
		return t, ferr("data_offsets", "[%d, %d] spans %d bytes but %s %v needs %d bytes",
			t.Begin, t.End, t.End-t.Begin, t.DType, dims, nbytes)
	}
	return t, nil
}

// parseIntArray decodes a JSON array of non-negative integers that fit in int64.
func parseIntArray(raw json.RawMessage) ([]int64, error) {
	if len(raw) == 0 || raw[0] != '[' {
		return nil, fmt.Errorf("must be an array of non-negative integers, found %.40s", raw)
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(raw, &elems); err != nil {
		return nil, err
	}
	out := make([]int64, len(elems))
	for i, e := range elems {
		v, err := strconv.ParseInt(string(e), 10, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("element %d is %.40s; must be a non-negative integer below 2^63", i, e)
		}
		out[i] = v
	}
	return out, nil
}

// checkCoverage requires the tensors' byte ranges to tile [0, bufLen) exactly:
// no overlap, no hole, nothing out of bounds, no trailing bytes. This is the
// rule the reference implementation enforces; it also guarantees that every
// later read stays inside the buffer.
func checkCoverage(src string, tensors []TensorInfo, bufLen int64) error {
	order := make([]int, len(tensors))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		ta, tb := tensors[a], tensors[b]
		if ta.Begin != tb.Begin {
			return cmpInt64(ta.Begin, tb.Begin)
		}
		return cmpInt64(ta.End, tb.End)
	})
	var errs errList
	pos := int64(0)
	prev := ""
	for _, i := range order {
		t := tensors[i]
		switch {
		case t.End > bufLen:
			errs.add(&Error{File: src, Tensor: t.Name, Field: "data_offsets",
				Msg: fmt.Sprintf("[%d, %d] runs past the end of the %d-byte data buffer; the file is truncated or the header is wrong", t.Begin, t.End, bufLen), Err: ErrFormat})
		case t.Begin < pos:
			errs.add(&Error{File: src, Tensor: t.Name, Field: "data_offsets",
				Msg: fmt.Sprintf("[%d, %d] overlaps tensor %q which ends at %d", t.Begin, t.End, prev, pos), Err: ErrFormat})
		case t.Begin > pos:
			errs.add(&Error{File: src, Tensor: t.Name, Field: "data_offsets",
				Msg: fmt.Sprintf("[%d, %d] leaves a hole of %d bytes after offset %d; the data buffer must be fully covered", t.Begin, t.End, t.Begin-pos, pos), Err: ErrFormat})
		}
		if t.End > pos {
			pos, prev = t.End, t.Name
		}
	}
	if pos < bufLen && len(errs.errs) == 0 {
		errs.add(&Error{File: src, Field: "data_offsets",
			Msg: fmt.Sprintf("tensors cover %d bytes but the data buffer has %d; the file has trailing bytes or a tensor is missing from the header", pos, bufLen), Err: ErrFormat})
	}
	return errs.err(src)
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
