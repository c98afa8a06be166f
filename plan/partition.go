package plan

import (
	"errors"
	"fmt"
	"strings"

	"github.com/loomtrain/loom/model"
)

// ZeroStage is a ZeRO stage: what the data-parallel ranks shard.
type ZeroStage int

// ZeRO stages.
const (
	Zero0 ZeroStage = iota // nothing sharded: plain data parallelism
	Zero1                  // optimizer state
	Zero2                  // optimizer state and gradients
	Zero3                  // optimizer state, gradients and parameters
)

// DefaultAlign is the shard alignment in elements (64 bytes of float32).
const DefaultAlign = 16

// Shard is a range [Offset, Offset+Len) of the rank-local flat buffer.
type Shard struct{ Offset, Len int }

// End is Offset+Len.
func (s Shard) End() int { return s.Offset + s.Len }

// UnitShard is how one model unit (model.Layout.Units: the embedding, a
// block, the head) of the local layout is split over the dp group. The
// unit is padded to DP·Chunk elements and dp rank r holds
// [Offset+r·Chunk, Offset+(r+1)·Chunk) clipped to the unit, so a gather or
// reduce of the unit is one balanced ring collective over a padded buffer
// of DP·Chunk elements (parallel.ShardRange splits it into exactly these
// chunks).
type UnitShard struct {
	model.Unit
	Chunk int // elements per rank, a multiple of the partition's Align
}

// Padded is DP·Chunk, the length of the unit's collective buffers.
func (u UnitShard) Padded(dp int) int { return dp * u.Chunk }

// Chunk is a box of one global tensor that a rank holds and writes to a
// checkpoint (PyTorch DCP's offsets and sizes): elements Start[i] ≤ x_i <
// Start[i]+Size[i] of tensor Name (global shape Global). Its elements are
// contiguous, in row-major order of the box, at flat position Flat of the
// rank's local layout and at Local of its local shard buffer.
type Chunk struct {
	Name   string
	Global []int
	Start  []int
	Size   []int
	Flat   int
	Local  int
}

// Len is the number of elements of the box.
func (c Chunk) Len() int {
	n := 1
	for _, s := range c.Size {
		n *= s
	}
	return n
}

// DPShard is one dp rank's part of the local flat buffer: one slice per
// unit (in unit order; a slice may be empty), stored back to back in the
// rank's local shard buffer of LocalLen elements, and the chunks of global
// tensors those slices hold that the rank owns (replicated chunks are
// owned by one tensor-parallel rank; padding is in no chunk).
type DPShard struct {
	Index    int
	Slices   []Shard // flat ranges, by unit
	Local    []int   // each slice's offset in the local shard buffer
	LocalLen int
	Chunks   []Chunk
}

// Partition is the ZeRO partition of one rank-local layout over its dp
// group. The same partition serves every stage; Stage says which buffers
// are sharded.
//
// Each unit is split across all ranks (as FSDP splits each wrapped module)
// rather than the whole buffer into DP contiguous ranges: that way a
// unit's gradients are one reduce-scatter as soon as the backward pass
// finishes it, and a stage-3 unit is one all-gather, both balanced across
// the ring. A rank's shard is therefore a list of {Offset, Len}, one per unit.
type Partition struct {
	Stage  ZeroStage
	DP     int
	Align  int // elements; each Chunk is a multiple of it
	Size   int // elements of the local flat buffer
	Layout *model.Layout
	Units  []UnitShard
	Ranks  []DPShard // by dp index
}

// NewPartition computes the partition of layout l across dp ranks for
// stage. align ≤ 0 means DefaultAlign.
func NewPartition(l *model.Layout, dp int, stage ZeroStage, align int) (*Partition, error) {
	var errs []error
	if dp < 1 {
		errs = append(errs, fmt.Errorf("plan: dp = %d: must be >= 1: %w", dp, ErrInvalid))
	}
	if stage < Zero0 || stage > Zero3 {
		errs = append(errs, fmt.Errorf("plan: zero stage = %d: allowed: 0, 1, 2, 3: %w", stage, ErrInvalid))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if align <= 0 {
		align = DefaultAlign
	}
	p := &Partition{Stage: stage, DP: dp, Align: align, Size: l.Size, Layout: l}
	for _, u := range l.Units() {
		per := (u.Len + dp - 1) / dp
		p.Units = append(p.Units, UnitShard{Unit: u, Chunk: (per + align - 1) / align * align})
	}
	for r := range dp {
		rs := DPShard{Index: r}
		for _, u := range p.Units {
			lo := min(u.Offset+r*u.Chunk, u.End())
			hi := min(lo+u.Chunk, u.End())
			rs.Slices = append(rs.Slices, Shard{Offset: lo, Len: hi - lo})
			rs.Local = append(rs.Local, rs.LocalLen)
			rs.LocalLen += hi - lo
		}
		for _, v := range l.Views {
			if !v.Owner {
				continue
			}
			for ui, s := range rs.Slices {
				lo, hi := max(v.Offset, s.Offset), min(v.End(), s.End())
				if lo >= hi {
					continue
				}
				for _, c := range Boxes(v, lo-v.Offset, hi-v.Offset) {
					c.Local = rs.Local[ui] + c.Flat - s.Offset
					rs.Chunks = append(rs.Chunks, c)
				}
			}
		}
		p.Ranks = append(p.Ranks, rs)
	}
	return p, nil
}

// Boxes splits elements [a, b) of view v (offsets relative to the view, in
// its local row-major order) into at most three boxes of the global
// tensor — a partial first row, whole rows, a partial last row — each
// contiguous in the local buffer, dropping padding rows. Flat is set to
// each box's flat position in the layout; Local is left zero.
func Boxes(v model.View, a, b int) []Chunk {
	if len(v.Shape) == 1 {
		b = min(b, v.Size[0])
		if a >= b {
			return nil
		}
		return []Chunk{{Name: v.Name, Global: v.Global, Start: []int{v.Start[0] + a}, Size: []int{b - a}, Flat: v.Offset + a}}
	}
	cols := v.Shape[1]
	b = min(b, v.Size[0]*cols) // padding rows are no part of the global tensor
	var out []Chunk
	box := func(row, col, rows, n int) {
		out = append(out, Chunk{Name: v.Name, Global: v.Global, Start: []int{v.Start[0] + row, v.Start[1] + col},
			Size: []int{rows, n}, Flat: v.Offset + row*cols + col})
	}
	if a < b && a%cols != 0 {
		n := min(cols-a%cols, b-a)
		box(a/cols, a%cols, 1, n)
		a += n
	}
	if rows := (b - a) / cols; a < b && rows > 0 {
		box(a/cols, 0, rows, cols)
		a += rows * cols
	}
	if a < b {
		box(a/cols, 0, 1, b-a)
	}
	return out
}

// MaxPadded is the largest unit's collective buffer length, DP·Chunk: the
// size of a working or staging buffer that fits any unit.
func (p *Partition) MaxPadded() int {
	n := 0
	for _, u := range p.Units {
		n = max(n, u.Padded(p.DP))
	}
	return n
}

// ShardsOptimizer reports whether optimizer state is sharded (stage ≥ 1).
func (p *Partition) ShardsOptimizer() bool { return p.Stage >= Zero1 }

// ShardsGrads reports whether gradients are sharded (stage ≥ 2).
func (p *Partition) ShardsGrads() bool { return p.Stage >= Zero2 }

// ShardsParams reports whether parameters are sharded (stage 3).
func (p *Partition) ShardsParams() bool { return p.Stage >= Zero3 }

// String prints the partition: per unit its chunk, per rank its slices and
// the boxes of global tensors it holds.
func (p *Partition) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "zero stage %d, dp %d, %d local elements, align %d\n", p.Stage, p.DP, p.Size, p.Align)
	for _, u := range p.Units {
		fmt.Fprintf(&b, "  unit %-10s [%d,%d) chunk %d padded %d\n", u.Name, u.Offset, u.End(), u.Chunk, u.Padded(p.DP))
	}
	for _, r := range p.Ranks {
		fmt.Fprintf(&b, "  dp %d: %d elements\n", r.Index, r.LocalLen)
		for _, c := range r.Chunks {
			fmt.Fprintf(&b, "    %-48s %s of %v local %d\n", c.Name, model.ChunkString(c.Start, c.Size), c.Global, c.Local)
		}
	}
	return b.String()
}
