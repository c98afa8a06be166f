package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// benchJSON parses one JSON object per line into maps.
func benchJSON(t *testing.T, out string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		recs = append(recs, m)
	}
	return recs
}

// TestBenchAllReduceAndWire runs the collective and wire benchmarks on
// worker processes (this test binary, see TestMain) with tiny sizes and
// checks the documented JSON fields. Timing is not asserted.
func TestBenchAllReduceAndWire(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		fields []string
	}{
		{[]string{"bench", "allreduce", "--ranks", "3", "--sizes", "4KiB,100KiB", "--iters", "3", "--log-format", "json"},
			[]string{"op", "ranks", "bytes", "time_us_p50", "algbw_gbps", "busbw_gbps"}},
		{[]string{"bench", "reduce-scatter", "--ranks", "2", "--sizes", "1KiB", "--iters", "3", "--log-format", "json"},
			[]string{"op", "ranks", "bytes", "time_us_p50", "algbw_gbps", "busbw_gbps"}},
		{[]string{"bench", "wire", "--sizes", "4KiB,1MiB", "--iters", "3", "--window", "1048576", "--log-format", "json"},
			[]string{"op", "network", "bytes", "time_us_p50", "gbps"}},
		{[]string{"bench", "wire", "--network", "unix", "--sizes", "64KiB", "--iters", "3", "--log-format", "json"},
			[]string{"op", "network", "bytes", "time_us_p50", "gbps"}},
		{[]string{"bench", "wire", "--ranks", "3", "--network", "unix", "--sizes", "4KiB,96KiB", "--iters", "3", "--log-format", "json"},
			[]string{"op", "ranks", "pattern", "bytes", "time_us_p50", "gbps"}},
		{[]string{"bench", "wire", "--ranks", "4", "--pattern", "pairs", "--window", "-1", "--sizes", "64KiB", "--iters", "3", "--log-format", "json"},
			[]string{"op", "ranks", "pattern", "bytes", "time_us_p50", "gbps"}},
	} {
		t.Run(tc.args[1], func(t *testing.T) {
			out, stderr, err := loom(t, tc.args...)
			if err != nil {
				t.Fatalf("loom %v: %v\n%s", tc.args, err, stderr)
			}
			recs := benchJSON(t, out)
			if len(recs) == 0 {
				t.Fatalf("no results:\n%s", out)
			}
			for _, r := range recs {
				for _, f := range tc.fields {
					if _, ok := r[f]; !ok {
						t.Errorf("result %v lacks %q", r, f)
					}
				}
				if v, _ := r["time_us_p50"].(float64); !(v > 0) {
					t.Errorf("result %v: time_us_p50 not positive", r)
				}
			}
		})
	}
}

func TestBenchWireBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--network", "udp"}, "--network"},
		{[]string{"--ranks", "1"}, "--ranks"},
		{[]string{"--ranks", "3", "--pattern", "pairs"}, "power of two"},
		{[]string{"--ranks", "4", "--pattern", "tree"}, "--pattern"},
		{[]string{"--window", "-2"}, "--window"},
	} {
		_, _, err := loom(t, append([]string{"bench", "wire", "--sizes", "4KiB"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("bench wire %v: got %v, want an error naming %q", tc.args, err, tc.want)
		}
	}
}

// TestWireSent: every pattern sends 2(N−1)/N of the buffer per rank and
// round, as the all-reduce whose bus bandwidth it bounds does.
func TestWireSent(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		n       int
	}{{"ring", 3}, {"ring", 4}, {"ring", 8}, {"pairs", 4}, {"pairs", 8}} {
		const size = 3 << 20 // divisible by every n here
		want := int64(size) * int64(2*(tc.n-1)) / int64(tc.n)
		if got := wireSent(tc.pattern, tc.n, size); got != want {
			t.Errorf("%s, %d ranks: sends %d bytes per round, want %d", tc.pattern, tc.n, got, want)
		}
	}
}

// TestBenchAllReduceNamesAlgorithm: with --algo auto each result names the
// algorithm the group ran at that size, not "auto".
func TestBenchAllReduceNamesAlgorithm(t *testing.T) {
	for _, tc := range []struct {
		ranks string
		want  map[float64]string // bytes → algo
	}{
		{"4", map[float64]string{4 << 10: "rd", 1 << 20: "hd"}},
		{"3", map[float64]string{4 << 10: "rd", 1 << 20: "ring"}},
	} {
		args := []string{"bench", "allreduce", "--ranks", tc.ranks, "--transport", "tcp", "--sizes", "4KiB,1MiB", "--iters", "2", "--log-format", "json"}
		out, stderr, err := loom(t, args...)
		if err != nil {
			t.Fatalf("loom %v: %v\n%s", args, err, stderr)
		}
		recs := benchJSON(t, out)
		if len(recs) != len(tc.want) {
			t.Fatalf("loom %v: %d results, want %d:\n%s", args, len(recs), len(tc.want), out)
		}
		for _, r := range recs {
			b, _ := r["bytes"].(float64)
			if got := r["algo"]; got != tc.want[b] {
				t.Errorf("%s ranks, %v bytes: algo %v, want %q", tc.ranks, b, got, tc.want[b])
			}
		}
	}
}

// TestBenchDirectAndBind: --algo direct runs and is named in the results;
// --bind takes none or core, and anything else is an error naming it.
func TestBenchDirectAndBind(t *testing.T) {
	args := []string{"bench", "allreduce", "--ranks", "3", "--algo", "direct", "--bind", "none", "--sizes", "4KiB", "--iters", "2", "--log-format", "json"}
	out, stderr, err := loom(t, args...)
	if err != nil {
		t.Fatalf("loom %v: %v\n%s", args, err, stderr)
	}
	for _, r := range benchJSON(t, out) {
		if r["algo"] != "direct" {
			t.Errorf("result %v: algo %v, want direct", r, r["algo"])
		}
	}
	if _, _, err := loom(t, "bench", "allreduce", "--bind", "socket", "--sizes", "4KiB"); err == nil || !strings.Contains(err.Error(), "--bind") {
		t.Fatalf("--bind socket: got %v, want an error naming --bind", err)
	}
}

// TestCommIters checks the default iteration count grows to fill the timed
// window for fast operations, stays for slow ones, and is capped.
func TestCommIters(t *testing.T) {
	for _, c := range []struct {
		iters int
		per   time.Duration
		want  int
	}{
		{500, 2 * time.Microsecond, commMaxIters}, // 100,000 wanted, capped
		{500, 40 * time.Microsecond, 5000},        // 200 ms / 40 µs
		{500, time.Millisecond, 500},              // the default already spans 500 ms
		{5, 300 * time.Millisecond, 5},            // a 256 MiB all-reduce keeps its 5
		{500, 0, 500},                             // no measurement: unchanged
	} {
		if got := commIters(c.iters, c.per); got != c.want {
			t.Errorf("commIters(%d, %v) = %d, want %d", c.iters, c.per, got, c.want)
		}
	}
}
