package timeline

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/plan"
)

// Two ranks' synthetic step: rank 0 computes 0–10 ms and 20–30 ms, rank 1
// 10–30 ms; the span is 30 ms, busy 40 of 60 rank-ms: a bubble of 1/3.
// Saved, merged, read back and analysed, the events survive and the
// figures come out.
func TestSaveMergeReadAnalyze(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	tls := []*Timeline{
		{Rank: 0, Coord: plan.Coord{}, Step: 7, Events: []Event{
			{Name: "0F0", Cat: Compute, Kind: "F", Stage: 0, Micro: 0, Start: ms(0), End: ms(10)},
			{Name: "0RECV_B0", Cat: Wait, Kind: "RECV_B", Stage: 0, Micro: 0, Start: ms(10), End: ms(20)},
			{Name: "0B0", Cat: Compute, Kind: "B", Stage: 0, Micro: 0, Start: ms(20), End: ms(30)},
			{Name: "all-reduce pp.dp0.tp0 (2)", Cat: Collective, Kind: "all-reduce", Stage: -1, Micro: -1, Start: ms(30), End: ms(31)},
		}},
		{Rank: 1, Coord: plan.Coord{PP: 1}, Step: 7, Events: []Event{
			{Name: "1F0", Cat: Compute, Kind: "F", Stage: 1, Micro: 0, Start: ms(10), End: ms(16)},
			{Name: "1B0", Cat: Compute, Kind: "B", Stage: 1, Micro: 0, Start: ms(16), End: ms(30)},
			{Name: "send 1SEND_B0", Cat: Send, Kind: Send, Stage: 1, Micro: 0, Start: ms(30), End: ms(30)},
		}},
	}
	dir := t.TempDir()
	for _, tl := range tls {
		if err := Save(dir, tl); err != nil {
			t.Fatal(err)
		}
	}
	path, err := SaveMerged(dir, 2)
	if err != nil || !strings.HasSuffix(path, "timeline.json") {
		t.Fatalf("%q %v", path, err)
	}
	b, err := Merge(dir, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"traceEvents"`, `"ph": "X"`, `"rank 1 (dp 0, tp 0, pp 1) step 7"`, `"thread_name"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("trace lacks %s", want)
		}
	}
	st, err := Analyze(b)
	if err != nil {
		t.Fatal(err)
	}
	if st.Ranks != 2 || st.Span != 30*time.Millisecond || math.Abs(st.Bubble-1.0/3) > 1e-6 ||
		st.Mean["F"][1] != 6*time.Millisecond || st.Mean["B"][0] != 10*time.Millisecond {
		t.Fatalf("stats %+v", st)
	}
	back, err := Read(b)
	if err != nil || len(back) != 2 || back[1].Step != 7 || len(back[1].Events) != 3 {
		t.Fatalf("read back %+v %v", back, err)
	}
	near := func(a, b time.Time) bool { return a.Sub(b).Abs() < time.Microsecond } // traces count µs in float64
	if e := back[0].Events[1]; e.Kind != "RECV_B" || e.Stage != 0 || e.Micro != 0 || !near(e.Start, ms(10)) || !near(e.End, ms(20)) {
		t.Fatalf("event %+v", e)
	}
	if _, err := Merge(dir, 3); !errors.Is(err, ErrNone) || !strings.Contains(err.Error(), "rank 2 of 3") {
		t.Fatalf("missing rank: %v", err)
	}
	if _, err := Analyze([]byte(`{"traceEvents": []}`)); err == nil {
		t.Fatal("no error for a trace without compute")
	}
}
