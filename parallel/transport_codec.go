package parallel

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
)

// Codec selects how frames are encoded on the wire. Both produce the
// protobuf encoding of loomv1.Frame; they differ in how many times the
// payload is copied.
type Codec int

const (
	// CodecRaw writes the frame header with protowire and hands the
	// caller's float32 payload to gRPC without copying it; on receive the
	// payload stays in gRPC's buffers and is reduced or copied straight into
	// the destination. The default.
	CodecRaw Codec = iota
	// CodecProto marshals a loomv1.Frame with proto.Marshal and unmarshals
	// with proto.Unmarshal: one extra copy on send and two on receive. Kept
	// as the measured baseline.
	CodecProto
)

// String returns "raw" or "proto".
func (c Codec) String() string {
	switch c {
	case CodecRaw:
		return "raw"
	case CodecProto:
		return "proto"
	}
	return fmt.Sprintf("Codec(%d)", int(c))
}

// ParseCodec parses "raw" or "proto".
func ParseCodec(s string) (Codec, error) {
	switch s {
	case "raw":
		return CodecRaw, nil
	case "proto":
		return CodecProto, nil
	}
	return 0, fmt.Errorf("codec %q: want raw or proto", s)
}

// inlineBytes is the payload size up to which the raw codec copies the
// payload into the header buffer: below it a copy is cheaper than tracking
// when gRPC has finished with the caller's memory.
const inlineBytes = 32 << 10

// inlineBufBytes is the size of the pooled buffers that carry a header and
// an inline payload: inlineBytes plus room for a header with names of a
// few hundred bytes (longer ones get a buffer of their own).
const inlineBufBytes = inlineBytes + 1024

// Frame field numbers, from peer.proto.
const (
	fieldKind       = 1
	fieldJob        = 2
	fieldGeneration = 3
	fieldGroup      = 4
	fieldSeq        = 5
	fieldTag        = 6
	fieldSrcRank    = 7
	fieldOp         = 8
	fieldLength     = 9
	fieldSrcAddr    = 10
	fieldDetail     = 11
	fieldFailedRank = 12
	fieldFailedAddr = 13
	fieldCause      = 16
	fieldTransport  = 17
	fieldBootID     = 18
	fieldSecret     = 19
	fieldShmAddr    = 20
	fieldPad        = 14
	fieldPayload    = 15
)

// grpcPrefixLen is gRPC's per-message prefix (flag byte + length); the raw
// codec pads the header so that prefix+header is a multiple of 4 and the
// payload lands 4-byte aligned in gRPC's receive buffers.
const grpcPrefixLen = 5

// wireFrame is the in-memory form of a loomv1.Frame. A frame being sent
// references the sender's float32 memory (out); a received frame owns
// references to gRPC's receive buffers (in) until release is called.
type wireFrame struct {
	kind       loomv1.FrameKind
	job        string
	generation uint64
	group      string
	seq        uint64
	tag        uint32
	srcRank    int32
	op         loomv1.CollectiveOp
	length     uint64
	srcAddr    string
	detail     string
	failedRank int32
	failedAddr string
	cause      loomv1.FailureCause
	transport  loomv1.DataTransport // HELLO, WELCOME
	bootID     string               // HELLO
	secret     []byte               // WELCOME
	shmAddr    string               // WELCOME

	out      []float32 // payload to send
	sent     *sendDone // completed when gRPC no longer references out
	zeroCopy bool      // set by Marshal when gRPC references out after SendMsg
	// lazy (set by the caller) lets a bulk link return before its peer
	// has read out; the link then sets ack and ackWant, and out stays
	// referenced until ack.settle(ackWant) returns.
	lazy    bool
	ack     ackWaiter
	ackWant uint64

	in     mem.BufferSlice // received message (or payload) bytes
	inSkip int             // offset of the payload within in
	inLen  int             // payload length in bytes
	inArr  [1]mem.Buffer   // backing array of in for bulk frames
	pool   *sync.Pool      // where the frame goes when released; nil: nowhere
}

// release drops the frame's references to its receive buffers; a pooled
// frame is recycled and must not be used again.
func (f *wireFrame) release() {
	if f.in != nil {
		f.in.Free()
		f.in = nil
	}
	if p := f.pool; p != nil {
		*f = wireFrame{}
		p.Put(f)
	}
}

// sendDone reports when gRPC no longer references a payload that was
// handed to it without a copy. It implements mem.BufferPool so that the
// last Free of the payload buffer calls Put. Safe for concurrent use.
type sendDone struct {
	once sync.Once
	done chan struct{}
}

func newSendDone() *sendDone { return &sendDone{done: make(chan struct{})} }

// complete marks the payload as no longer referenced.
func (s *sendDone) complete() { s.once.Do(func() { close(s.done) }) }

// Get is never called: the buffer is created with mem.NewBuffer.
func (s *sendDone) Get(int) *[]byte { panic("parallel: sendDone.Get called") }

// Put is called by gRPC when the payload buffer is freed.
func (s *sendDone) Put(*[]byte) { s.complete() }

// floatBytes views a float32 slice as its little-endian bytes.
func floatBytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))
}

// appendHeader appends every field of f but pad and payload in protobuf
// encoding.
func appendHeader(b []byte, f *wireFrame) []byte {
	if f.kind != 0 {
		b = protowire.AppendTag(b, fieldKind, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(f.kind))
	}
	if f.job != "" {
		b = protowire.AppendTag(b, fieldJob, protowire.BytesType)
		b = protowire.AppendString(b, f.job)
	}
	if f.generation != 0 {
		b = protowire.AppendTag(b, fieldGeneration, protowire.VarintType)
		b = protowire.AppendVarint(b, f.generation)
	}
	if f.group != "" {
		b = protowire.AppendTag(b, fieldGroup, protowire.BytesType)
		b = protowire.AppendString(b, f.group)
	}
	if f.seq != 0 {
		b = protowire.AppendTag(b, fieldSeq, protowire.VarintType)
		b = protowire.AppendVarint(b, f.seq)
	}
	if f.tag != 0 {
		b = protowire.AppendTag(b, fieldTag, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(f.tag))
	}
	if f.srcRank != 0 {
		b = protowire.AppendTag(b, fieldSrcRank, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(f.srcRank)))
	}
	if f.op != 0 {
		b = protowire.AppendTag(b, fieldOp, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(f.op))
	}
	if f.length != 0 {
		b = protowire.AppendTag(b, fieldLength, protowire.VarintType)
		b = protowire.AppendVarint(b, f.length)
	}
	if f.srcAddr != "" {
		b = protowire.AppendTag(b, fieldSrcAddr, protowire.BytesType)
		b = protowire.AppendString(b, f.srcAddr)
	}
	if f.detail != "" {
		b = protowire.AppendTag(b, fieldDetail, protowire.BytesType)
		b = protowire.AppendString(b, f.detail)
	}
	if f.failedRank != 0 {
		b = protowire.AppendTag(b, fieldFailedRank, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(f.failedRank)))
	}
	if f.failedAddr != "" {
		b = protowire.AppendTag(b, fieldFailedAddr, protowire.BytesType)
		b = protowire.AppendString(b, f.failedAddr)
	}
	if f.cause != 0 {
		b = protowire.AppendTag(b, fieldCause, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(f.cause))
	}
	if f.transport != 0 {
		b = protowire.AppendTag(b, fieldTransport, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(f.transport))
	}
	if f.bootID != "" {
		b = protowire.AppendTag(b, fieldBootID, protowire.BytesType)
		b = protowire.AppendString(b, f.bootID)
	}
	if len(f.secret) != 0 {
		b = protowire.AppendTag(b, fieldSecret, protowire.BytesType)
		b = protowire.AppendBytes(b, f.secret)
	}
	if f.shmAddr != "" {
		b = protowire.AppendTag(b, fieldShmAddr, protowire.BytesType)
		b = protowire.AppendString(b, f.shmAddr)
	}
	return b
}

// rawCodec is the zero-copy encoding.CodecV2 for wireFrame. Messages with
// inline payloads are built in buffers from small, which gRPC returns once
// it has written them (nil: a fresh buffer each time).
type rawCodec struct {
	small *framePool
}

// Name is the content-subtype; it is forced on both ends, never negotiated.
func (rawCodec) Name() string { return "loom-raw" }

// Marshal encodes f as header + pad + payload, the payload last and 4-byte
// aligned. Payloads above inlineBytes are not copied: gRPC frees the
// buffer wrapping them once written to the socket, which completes f.sent.
func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*wireFrame)
	if !ok {
		return nil, fmt.Errorf("parallel: raw codec cannot marshal %T", v)
	}
	pay := floatBytes(f.out)
	hdrCap := 128 + len(f.job) + len(f.group) + len(f.srcAddr) + len(f.detail) + len(f.failedAddr) + len(f.bootID) + len(f.secret) + len(f.shmAddr)
	if len(pay) <= inlineBytes {
		hdrCap += len(pay)
	}
	var hdr []byte
	var hdrBuf *[]byte // pooled backing array of hdr, or nil
	if c.small != nil && hdrCap <= c.small.size {
		hdrBuf = c.small.Get(0)
		hdr = (*hdrBuf)[:0]
	} else {
		hdr = make([]byte, 0, hdrCap)
	}
	// wrap hands the finished message to gRPC, which returns a pooled
	// buffer once written.
	wrap := func(b []byte) mem.Buffer {
		if hdrBuf == nil {
			return mem.SliceBuffer(b)
		}
		*hdrBuf = b
		return mem.NewBuffer(hdrBuf, c.small)
	}
	hdr = appendHeader(hdr, f)
	if len(pay) == 0 {
		return mem.BufferSlice{wrap(hdr)}, nil
	}
	// pad field: tag (1 byte) + length (1 byte) + pad bytes, then the
	// payload tag (1 byte) and length varint.
	payPrefix := 1 + protowire.SizeVarint(uint64(len(pay)))
	pad := (4 - (grpcPrefixLen+len(hdr)+2+payPrefix)%4) % 4
	hdr = protowire.AppendTag(hdr, fieldPad, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(pad))
	hdr = append(hdr, make([]byte, pad)...)
	hdr = protowire.AppendTag(hdr, fieldPayload, protowire.BytesType)
	hdr = protowire.AppendVarint(hdr, uint64(len(pay)))
	if len(pay) <= inlineBytes {
		return mem.BufferSlice{wrap(append(hdr, pay...))}, nil
	}
	if f.sent == nil {
		f.sent = newSendDone()
	}
	f.zeroCopy = true
	return mem.BufferSlice{wrap(hdr), mem.NewBuffer(&pay, f.sent)}, nil
}

// Unmarshal decodes a frame. When the header lies within the first receive
// buffer and the payload is the last field (always so for frames from
// Marshal), the payload is not copied: f keeps a reference to data.
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*wireFrame)
	if !ok {
		return fmt.Errorf("parallel: raw codec cannot unmarshal into %T", v)
	}
	*f = wireFrame{}
	total := data.Len()
	if total == 0 {
		return nil
	}
	first := data[0].ReadOnlyData()
	off, n, complete, err := decodeFrame(first, total, f)
	if err != nil {
		return err
	}
	if complete {
		if n > 0 {
			data.Ref()
			f.in, f.inSkip, f.inLen = data, off, n
		}
		return nil
	}
	// Slow path: header split across buffers, or payload not last.
	whole := data.Materialize()
	*f = wireFrame{}
	off, n, _, err = decodeFrame(whole, total, f)
	if err != nil {
		return err
	}
	if n > 0 {
		f.in, f.inSkip, f.inLen = mem.BufferSlice{mem.SliceBuffer(whole)}, off, n
	}
	return nil
}

var errBadFrame = errors.New("malformed frame")

// decodeFrame parses the fields of a message of total bytes whose first
// len(b) bytes are b. It returns the payload's offset and length. complete
// is false when b ends before the fields do, or the payload is not the last
// field and b is not the whole message; the caller then retries with the
// whole message.
func decodeFrame(b []byte, total int, f *wireFrame) (payOff, payLen int, complete bool, err error) {
	whole := len(b) == total
	i := 0
	for i < len(b) {
		num, typ, n := protowire.ConsumeTag(b[i:])
		if n < 0 {
			if !whole {
				return 0, 0, false, nil
			}
			return 0, 0, false, fmt.Errorf("%w: %v", errBadFrame, protowire.ParseError(n))
		}
		i += n
		if num == fieldPayload && typ == protowire.BytesType {
			l, m := protowire.ConsumeVarint(b[i:])
			if m < 0 {
				if !whole {
					return 0, 0, false, nil
				}
				return 0, 0, false, fmt.Errorf("%w: payload length: %v", errBadFrame, protowire.ParseError(m))
			}
			i += m
			if l > uint64(total-i) {
				return 0, 0, false, fmt.Errorf("%w: payload of %d bytes overruns message of %d", errBadFrame, l, total)
			}
			if i+int(l) == total { // payload is last: done, zero-copy
				return i, int(l), true, nil
			}
			if !whole {
				return 0, 0, false, nil
			}
			payOff, payLen = i, int(l) // later occurrence wins, as in protobuf
			i += int(l)
			continue
		}
		var val []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b[i:])
		case protowire.BytesType:
			val, n = protowire.ConsumeBytes(b[i:])
		default:
			n = protowire.ConsumeFieldValue(num, typ, b[i:])
		}
		if n < 0 {
			if !whole {
				return 0, 0, false, nil
			}
			return 0, 0, false, fmt.Errorf("%w: field %d: %v", errBadFrame, num, protowire.ParseError(n))
		}
		i += n
		switch {
		case typ == protowire.VarintType && num == fieldKind:
			f.kind = loomv1.FrameKind(int32(x))
		case typ == protowire.VarintType && num == fieldGeneration:
			f.generation = x
		case typ == protowire.VarintType && num == fieldSeq:
			f.seq = x
		case typ == protowire.VarintType && num == fieldTag:
			f.tag = uint32(x)
		case typ == protowire.VarintType && num == fieldSrcRank:
			f.srcRank = int32(x)
		case typ == protowire.VarintType && num == fieldOp:
			f.op = loomv1.CollectiveOp(int32(x))
		case typ == protowire.VarintType && num == fieldLength:
			f.length = x
		case typ == protowire.VarintType && num == fieldFailedRank:
			f.failedRank = int32(x)
		case typ == protowire.VarintType && num == fieldCause:
			f.cause = loomv1.FailureCause(int32(x))
		case typ == protowire.BytesType && num == fieldFailedAddr:
			f.failedAddr = string(val)
		case typ == protowire.BytesType && num == fieldJob:
			f.job = string(val)
		case typ == protowire.BytesType && num == fieldGroup:
			f.group = string(val)
		case typ == protowire.BytesType && num == fieldSrcAddr:
			f.srcAddr = string(val)
		case typ == protowire.BytesType && num == fieldDetail:
			f.detail = string(val)
		case typ == protowire.VarintType && num == fieldTransport:
			f.transport = loomv1.DataTransport(int32(x))
		case typ == protowire.BytesType && num == fieldBootID:
			f.bootID = string(val)
		case typ == protowire.BytesType && num == fieldSecret:
			f.secret = append([]byte(nil), val...)
		case typ == protowire.BytesType && num == fieldShmAddr:
			f.shmAddr = string(val)
		}
	}
	if !whole {
		return 0, 0, false, nil
	}
	return payOff, payLen, true, nil
}

// protoCodec is the plain-protobuf baseline: it copies the payload into the
// marshalled message and out of it again.
type protoCodec struct{}

// Name is the content-subtype; it is forced on both ends, never negotiated.
func (protoCodec) Name() string { return "loom-proto" }

// Marshal encodes f with proto.Marshal.
func (protoCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*wireFrame)
	if !ok {
		return nil, fmt.Errorf("parallel: proto codec cannot marshal %T", v)
	}
	m := &loomv1.Frame{
		Kind: f.kind, Job: f.job, Generation: f.generation, Group: f.group,
		Seq: f.seq, Tag: f.tag, SrcRank: f.srcRank, Op: f.op, Length: f.length,
		SrcAddr: f.srcAddr, Detail: f.detail, FailedRank: f.failedRank, FailedAddr: f.failedAddr,
		Cause: f.cause, Transport: f.transport, BootId: f.bootID, Secret: f.secret, ShmAddr: f.shmAddr,
		Payload: floatBytes(f.out),
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

// Unmarshal decodes with proto.Unmarshal.
func (protoCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*wireFrame)
	if !ok {
		return fmt.Errorf("parallel: proto codec cannot unmarshal into %T", v)
	}
	var m loomv1.Frame
	if err := proto.Unmarshal(data.Materialize(), &m); err != nil {
		return fmt.Errorf("%w: %v", errBadFrame, err)
	}
	*f = wireFrame{
		kind: m.Kind, job: m.Job, generation: m.Generation, group: m.Group,
		seq: m.Seq, tag: m.Tag, srcRank: m.SrcRank, op: m.Op, length: m.Length,
		srcAddr: m.SrcAddr, detail: m.Detail, failedRank: m.FailedRank, failedAddr: m.FailedAddr,
		cause: m.Cause, transport: m.Transport, bootID: m.BootId, secret: m.Secret, shmAddr: m.ShmAddr,
	}
	if len(m.Payload) > 0 {
		f.in, f.inLen = mem.BufferSlice{mem.SliceBuffer(m.Payload)}, len(m.Payload)
	}
	return nil
}
