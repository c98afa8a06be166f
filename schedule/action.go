// Package schedule owns pipeline schedules as data: pure generators that
// turn (pipeline stages, micro-batches, virtual stages) into each rank's
// ordered list of actions (GPipe, 1F1B, interleaved 1F1B, zero-bubble
// ZB-H1; one stage is a schedule too), a separate pass that adds the sends
// and receives between stages, a text form of actions that prints and
// parses back, and a simulator that runs the lists under a cost model and
// proves them free of deadlock — every receive has its send, each
// micro-batch's forward precedes its backward on every stage — while
// measuring the bubble and the peak number of micro-batch activations each
// rank holds. The trainer's executor runs exactly these lists.
package schedule

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Kind is what an action does.
type Kind uint8

// Action kinds. A B computes the input gradient of its stage and, unless
// the schedule also lists a W for the same stage and micro-batch (the
// zero-bubble split, Qi et al. 2024), the weight gradients too.
const (
	F     Kind = iota // forward
	B                 // backward: input gradient (and weight gradients unless split off into W)
	W                 // weight gradients
	SendF             // send the stage's forward output to the next stage
	RecvF             // receive the stage's forward input from the previous stage
	SendB             // send the stage's input gradient to the previous stage
	RecvB             // receive the stage's output gradient from the next stage
	numKinds
)

var kindNames = [numKinds]string{"F", "B", "W", "SEND_F", "RECV_F", "SEND_B", "RECV_B"}

func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Compute reports whether k runs the model (F, B or W).
func (k Kind) Compute() bool { return k <= W }

// Comm reports whether k sends or receives.
func (k Kind) Comm() bool { return k >= SendF && k < numKinds }

// Action is one step of a rank's list: Kind for micro-batch MB on
// (virtual) stage Stage. It prints as PyTorch's pipelining actions do —
// the stage, the kind, the micro-batch: "0F3", "1SEND_F3", "2RECV_B0" —
// and Parse reads that form back.
type Action struct {
	Stage int
	Kind  Kind
	MB    int
}

func (a Action) String() string { return strconv.Itoa(a.Stage) + a.Kind.String() + strconv.Itoa(a.MB) }

// ErrSyntax is the class of errors Parse returns.
var ErrSyntax = errors.New("invalid action")

// Parse reads an action in the form Action.String prints.
func Parse(s string) (Action, error) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	j := len(s)
	for j > i && s[j-1] >= '0' && s[j-1] <= '9' {
		j--
	}
	if i == 0 || j == len(s) || i == j {
		return Action{}, fmt.Errorf("schedule: %q: want STAGE KIND MICROBATCH, e.g. 0F3 or 1SEND_B2: %w", s, ErrSyntax)
	}
	stage, err1 := strconv.Atoi(s[:i])
	mb, err2 := strconv.Atoi(s[j:])
	if err1 != nil || err2 != nil {
		return Action{}, fmt.Errorf("schedule: %q: stage or micro-batch out of range: %w", s, ErrSyntax)
	}
	for k := range numKinds {
		if kindNames[k] == s[i:j] {
			return Action{Stage: stage, Kind: k, MB: mb}, nil
		}
	}
	return Action{}, fmt.Errorf("schedule: %q: unknown kind %q (allowed: %s): %w", s, s[i:j], strings.Join(kindNames[:], ", "), ErrSyntax)
}

// ParseList reads a space-separated list of actions.
func ParseList(s string) ([]Action, error) {
	var out []Action
	for _, f := range strings.Fields(s) {
		a, err := Parse(f)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// FormatList prints actions separated by spaces.
func FormatList(as []Action) string {
	parts := make([]string, len(as))
	for i, a := range as {
		parts[i] = a.String()
	}
	return strings.Join(parts, " ")
}
