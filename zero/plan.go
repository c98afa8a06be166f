// Package zero owns ZeRO: the partition of the flat parameter, gradient
// and optimizer-state buffers across a data-parallel group (Plan, a pure
// value), the per-rank executor that runs stages 0–3 of a training step
// over a parallel.Group (Engine), and per-rank memory accounting (Memory).
package zero

import (
	"errors"
	"fmt"
	"strings"

	"github.com/loomtrain/loom/model"
)

// Stage is a ZeRO stage: what the data-parallel ranks shard.
type Stage int

// Stages.
const (
	Stage0 Stage = iota // nothing sharded: plain data parallelism
	Stage1              // optimizer state
	Stage2              // optimizer state and gradients
	Stage3              // optimizer state, gradients and parameters
)

// DefaultAlign is the shard alignment in elements (64 bytes of float32).
const DefaultAlign = 16

// ErrInvalid is the class of errors about plan arguments.
var ErrInvalid = errors.New("invalid ZeRO plan")

// Shard is a range [Offset, Offset+Len) of the flat buffer.
type Shard struct{ Offset, Len int }

// End is Offset+Len.
func (s Shard) End() int { return s.Offset + s.Len }

// UnitPlan is how one model unit (model.Layout.Units: the embedding, a
// block, the head) is split. The unit is padded to DP·Chunk elements and
// rank r holds [Offset+r·Chunk, Offset+(r+1)·Chunk) clipped to the unit, so
// a gather or reduce of the unit is one balanced ring collective over a
// padded buffer of DP·Chunk elements (parallel.ShardRange splits it into
// exactly these chunks).
type UnitPlan struct {
	model.Unit
	Chunk int // elements per rank, a multiple of the plan's Align
}

// Padded is DP·Chunk, the length of the unit's collective buffers.
func (u UnitPlan) Padded(dp int) int { return dp * u.Chunk }

// TensorShard records which elements of one global tensor a rank holds,
// for checkpoints and resharding: elements [Start, Start+Len) of the
// row-major tensor Name of shape GlobalShape (at flat offset Offset) are at
// [Local, Local+Len) of the rank's local shard buffer.
type TensorShard struct {
	Name        string
	GlobalShape []int
	Offset      int // the tensor's first element in the flat buffer
	Start, Len  int // elements of the tensor held
	Local       int // position in the rank's local shard buffer
}

// RankPlan is one rank's part of the flat buffer: one slice per unit (in
// unit order; a slice may be empty), stored back to back in the rank's
// local shard buffer of LocalLen elements.
type RankPlan struct {
	Rank     int
	Slices   []Shard // flat ranges, by unit
	Local    []int   // each slice's offset in the local buffer
	LocalLen int
	Tensors  []TensorShard
}

// Plan partitions a model's flat buffers across DP ranks for a ZeRO stage.
// It is a pure value: computed from the layout, the group size and the
// stage, it can be printed and tested without a network. The same
// partition serves every stage; Stage says which buffers are sharded.
//
// Each unit is split across all ranks (as FSDP splits each wrapped module)
// rather than the whole buffer into DP contiguous ranges: that way a
// unit's gradients are one reduce-scatter as soon as the backward pass
// finishes it, and a stage-3 unit is one all-gather, both balanced across
// the ring. A rank's shard is therefore a list of {Offset, Len}, one per unit.
type Plan struct {
	Stage Stage
	DP    int
	Align int // elements; each Chunk is a multiple of it
	Size  int // Ψ, elements of the flat buffer
	Units []UnitPlan
	Ranks []RankPlan
}

// NewPlan computes the partition of layout l across dp ranks for stage.
// align ≤ 0 means DefaultAlign.
func NewPlan(l *model.Layout, dp int, stage Stage, align int) (Plan, error) {
	var errs []error
	if dp < 1 {
		errs = append(errs, fmt.Errorf("zero: dp = %d: must be >= 1: %w", dp, ErrInvalid))
	}
	if stage < Stage0 || stage > Stage3 {
		errs = append(errs, fmt.Errorf("zero: stage = %d: allowed: 0, 1, 2, 3: %w", stage, ErrInvalid))
	}
	if err := errors.Join(errs...); err != nil {
		return Plan{}, err
	}
	if align <= 0 {
		align = DefaultAlign
	}
	p := Plan{Stage: stage, DP: dp, Align: align, Size: l.Size}
	for _, u := range l.Units() {
		per := (u.Len + dp - 1) / dp
		p.Units = append(p.Units, UnitPlan{Unit: u, Chunk: (per + align - 1) / align * align})
	}
	for r := range dp {
		rp := RankPlan{Rank: r}
		for _, u := range p.Units {
			lo := min(u.Offset+r*u.Chunk, u.End())
			hi := min(lo+u.Chunk, u.End())
			rp.Slices = append(rp.Slices, Shard{Offset: lo, Len: hi - lo})
			rp.Local = append(rp.Local, rp.LocalLen)
			rp.LocalLen += hi - lo
		}
		for _, v := range l.Views {
			for ui, s := range rp.Slices {
				lo, hi := max(v.Offset, s.Offset), min(v.End(), s.End())
				if lo >= hi {
					continue
				}
				rp.Tensors = append(rp.Tensors, TensorShard{
					Name: v.Name, GlobalShape: v.Shape, Offset: v.Offset,
					Start: lo - v.Offset, Len: hi - lo, Local: rp.Local[ui] + lo - s.Offset,
				})
			}
		}
		p.Ranks = append(p.Ranks, rp)
	}
	return p, nil
}

// MaxPadded is the largest unit's collective buffer length, DP·Chunk: the
// size of a working or staging buffer that fits any unit.
func (p Plan) MaxPadded() int {
	n := 0
	for _, u := range p.Units {
		n = max(n, u.Padded(p.DP))
	}
	return n
}

// ShardsOptimizer, ShardsGrads and ShardsParams say what the stage shards.
func (p Plan) ShardsOptimizer() bool { return p.Stage >= Stage1 }

// ShardsGrads reports whether gradients are sharded (stage ≥ 2).
func (p Plan) ShardsGrads() bool { return p.Stage >= Stage2 }

// ShardsParams reports whether parameters are sharded (stage 3).
func (p Plan) ShardsParams() bool { return p.Stage >= Stage3 }

// String prints the plan: per unit its chunk, per rank its slices and
// tensor records.
func (p Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "zero stage %d, dp %d, %d elements, align %d\n", p.Stage, p.DP, p.Size, p.Align)
	for _, u := range p.Units {
		fmt.Fprintf(&b, "  unit %-10s [%d,%d) chunk %d padded %d\n", u.Name, u.Offset, u.End(), u.Chunk, u.Padded(p.DP))
	}
	for _, r := range p.Ranks {
		fmt.Fprintf(&b, "  rank %d: %d elements\n", r.Rank, r.LocalLen)
		for _, t := range r.Tensors {
			fmt.Fprintf(&b, "    %-48s %v [%d,+%d) local %d\n", t.Name, t.GlobalShape, t.Start, t.Len, t.Local)
		}
	}
	return b.String()
}
