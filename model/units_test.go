package model_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/loomtrain/loom/model"
	"github.com/loomtrain/loom/tensor"
)

// Units tile the layout; a model whose units are bound one by one to
// separate buffers (as ZeRO binds gathered working buffers) computes the
// same loss and gradients as one over a flat buffer, with every hook
// called in the documented order.
func TestUnboundModelMatchesFlat(t *testing.T) {
	for _, tied := range []bool{false, true} {
		cfg := tinyConfig()
		cfg.TieEmbeddings, cfg.NLayers = tied, 2
		ref := newTiny(t, cfg)
		us := ref.Layout.Units()
		next := 0
		for _, u := range us {
			if u.Offset != next || u.Len <= 0 {
				t.Fatalf("unit %s at [%d,+%d), want offset %d", u.Name, u.Offset, u.Len, next)
			}
			next = u.End()
		}
		if next != ref.Layout.Size {
			t.Fatalf("units end at %d, layout size %d", next, ref.Layout.Size)
		}
		l, err := model.NewLayout(cfg)
		if err != nil {
			t.Fatal(err)
		}
		m, err := model.NewUnbound(l, tensor.Reference{}, model.Comms{})
		if err != nil {
			t.Fatal(err)
		}
		grads := make([][]float32, len(us))
		for i, u := range us {
			p := make([]float32, u.Len)
			model.InitParams(m.Layout, 42, p, u.Offset)
			if fmt.Sprint(p) != fmt.Sprint(ref.Params[u.Offset:u.End()]) {
				t.Fatalf("tied=%v: InitParams of unit %s differs from Init", tied, u.Name)
			}
			grads[i] = make([]float32, u.Len)
			m.BindParams(i, p)
			m.BindGrads(i, grads[i])
		}
		B, T := 2, 5
		tokens, targets := batch(B, T, cfg.VocabSize, 3)
		a1, _ := ref.NewActs(B, T)
		a2, _ := m.NewActs(B, T)
		want, err := ref.ForwardBackward(a1, tokens, targets, 1)
		if err != nil {
			t.Fatal(err)
		}
		var order []string
		log := func(ev string) func(int) error {
			return func(u int) error { order = append(order, ev+us[u].Name); return nil }
		}
		got, err := m.ForwardBackwardHooks(context.Background(), a2, tokens, targets, 1, model.Hooks{
			BeforeForward: log("F"), AfterForward: log("f"), BeforeBackward: log("B"), AfterBackward: log("b"),
		})
		if err != nil || got != want {
			t.Fatalf("tied=%v: loss %v (%v), flat model %v", tied, got, err, want)
		}
		for i, u := range us {
			for j, g := range grads[i] {
				if w := ref.Grads[u.Offset+j]; g != w {
					t.Fatalf("tied=%v: unit %s grad %d = %v, flat %v", tied, u.Name, j, g, w)
				}
			}
		}
		wantOrder := "[Fembed fembed Fblock.0 fblock.0 Fblock.1 fblock.1 Fhead fhead Bhead bhead Bblock.1 bblock.1 Bblock.0 bblock.0 Bembed bembed]"
		if fmt.Sprint(order) != wantOrder {
			t.Fatalf("hook order %v, want %s", order, wantOrder)
		}
	}
}
