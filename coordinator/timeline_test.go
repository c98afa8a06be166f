package coordinator

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loomtrain/loom/plan"
	loomv1 "github.com/loomtrain/loom/proto/loom/v1"
	"github.com/loomtrain/loom/timeline"
)

// The dashboard's timeline endpoint reads what the job's ranks saved under
// its checkpoint directory: until every rank has, it says why there is
// nothing; then every rank's events with times from the step's first, the
// measured bubble, and the merged Chrome trace for Perfetto. An unknown
// job is a 404 naming it.
func TestTimelineEndpoint(t *testing.T) {
	dir := t.TempDir()
	spec := strings.Replace(historySpec, "data: {path: /nonexistent}", "data: {path: /nonexistent}\ncheckpoint: {dir: "+dir+"}", 1)
	spec = strings.Replace(spec, "parallel: {dp: 2}", "parallel: {pp: 2}", 1)
	spec = strings.Replace(spec, "n_layers: 1", "n_layers: 2", 1)
	d := &loomv1.JobDesired{Name: "h", SpecYaml: []byte(spec), WorldSize: 2, SubmittedUnixMs: 1700000000000}
	h := newHistorian(nil, NewKeys("/loom/"), nil, time.Now, func() bool { return false }, 0)
	h.jobs["h"] = newJobHistory(d)
	c := &Coordinator{cfg: Config{Now: time.Now}, keys: NewKeys("/loom/"), history: h}
	srv := httptest.NewServer(c.WebHandler())
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 1<<16)
		for {
			n, err := resp.Body.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return resp.StatusCode, b.String()
	}
	code, body := get("/api/jobs/h/timeline")
	var v Timeline
	if code != 200 || json.Unmarshal([]byte(body), &v) != nil || v.Available || !strings.Contains(v.Reason, "rank 0 of 2") || v.PP != 2 {
		t.Fatalf("before any timeline: %d %s", code, body)
	}
	if code, _ := get("/api/jobs/h/timeline.json"); code != http.StatusNotFound {
		t.Fatalf("trace before any timeline: %d", code)
	}
	t0 := time.Unix(1_700_000_000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	jobDir := filepath.Join(dir, "h")
	for r, evs := range [][]timeline.Event{
		{{Name: "0F0", Cat: timeline.Compute, Kind: "F", Stage: 0, Micro: 0, Start: ms(0), End: ms(10)},
			{Name: "0RECV_B0", Cat: timeline.Wait, Kind: "RECV_B", Stage: 0, Micro: 0, Start: ms(10), End: ms(20)},
			{Name: "0B0", Cat: timeline.Compute, Kind: "B", Stage: 0, Micro: 0, Start: ms(20), End: ms(30)}},
		{{Name: "1F0", Cat: timeline.Compute, Kind: "F", Stage: 1, Micro: 0, Start: ms(10), End: ms(20)},
			{Name: "1B0", Cat: timeline.Compute, Kind: "B", Stage: 1, Micro: 0, Start: ms(20), End: ms(30)}},
	} {
		if err := timeline.Save(jobDir, &timeline.Timeline{Rank: r, Coord: plan.Coord{PP: r}, Step: 5, Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	code, body = get("/api/jobs/h/timeline")
	v = Timeline{}
	if code != 200 || json.Unmarshal([]byte(body), &v) != nil || !v.Available || v.Step != 5 || len(v.Ranks) != 2 {
		t.Fatalf("timeline: %d %s", code, body)
	}
	if a := v.Ranks[0].Actions[1]; a.Kind != "wait" || a.Cat != timeline.Wait || a.Stage != 0 || a.Name != "0RECV_B0" || a.StartS < 0.0099 || a.EndS > 0.0201 {
		t.Fatalf("rank 0's wait %+v", a)
	}
	if v.Bubble < 0.333 || v.Bubble > 0.334 { // 40 of 60 rank-ms busy
		t.Fatalf("bubble %v", v.Bubble)
	}
	// 1F1B over 2 stages and 2 micro-batches of 10 ms passes idles
	// (p−1)/(m+p−1) of the step.
	if v.Schedule != "1f1b" || v.PP != 2 || v.VirtualStages != 1 || v.MicroBatches != 2 || math.Abs(v.SimulatedBubble-1.0/3) > 1e-9 {
		t.Fatalf("pipeline %s pp %d × %d, %d micro-batches, simulated bubble %v", v.Schedule, v.PP, v.VirtualStages, v.MicroBatches, v.SimulatedBubble)
	}
	if code, body := get("/api/jobs/h/timeline.json"); code != 200 || !strings.Contains(body, `"traceEvents"`) || !strings.Contains(body, "1B0") {
		t.Fatalf("trace: %d %.200s", code, body)
	}
	if code, body := get("/api/jobs/nope/timeline"); code != http.StatusNotFound || !strings.Contains(body, `no job "nope"`) {
		t.Fatalf("unknown job: %d %s", code, body)
	}
}
