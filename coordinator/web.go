package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/loomtrain/loom/web"
)

// sseInterval is the default least time between two updates of one live
// stream (?interval= changes it, down to sseMinInterval): bursts of step
// reports are coalesced, and an open page redraws at most this often. A
// redraw of the page costs headless Chromium ~45 ms of CPU on the 2-core
// development VM; at one per 2 s that is ~1% of a core.
const (
	sseInterval    = 2 * time.Second
	sseMinInterval = 250 * time.Millisecond
)

// sseKeepAlive is how often an idle live stream sends a comment, so that
// proxies and the browser keep it open.
const sseKeepAlive = 15 * time.Second

// WebHandler serves the dashboard (/ and /assets/), its JSON API (/api/)
// and its live stream (/api/events). Serve mounts it beside /metrics.
func (c *Coordinator) WebHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(web.Assets()))
	mux.HandleFunc("GET /api/info", c.serveInfo)
	mux.HandleFunc("GET /api/jobs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, c.history.jobList(c.cfg.Now()))
	})
	mux.HandleFunc("GET /api/jobs/{name}", func(w http.ResponseWriter, r *http.Request) {
		d, ok := c.history.jobDetail(r.PathValue("name"), c.cfg.Now())
		if !ok {
			c.noJob(w, r.PathValue("name"))
			return
		}
		writeJSON(w, d)
	})
	mux.HandleFunc("GET /api/jobs/{name}/history", func(w http.ResponseWriter, r *http.Request) {
		since := int64(-1)
		if s := r.URL.Query().Get("since"); s != "" {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				http.Error(w, fmt.Sprintf("since=%q: want a step number", s), http.StatusBadRequest)
				return
			}
			since = v
		}
		v, ok := c.history.history(r.PathValue("name"), since)
		if !ok {
			c.noJob(w, r.PathValue("name"))
			return
		}
		writeJSON(w, v)
	})
	mux.HandleFunc("GET /api/jobs/{name}/timeline", c.serveTimeline)
	mux.HandleFunc("GET /api/jobs/{name}/timeline.json", c.serveTimelineTrace)
	mux.HandleFunc("GET /api/events", c.serveEvents)
	return mux
}

func (c *Coordinator) noJob(w http.ResponseWriter, name string) {
	http.Error(w, fmt.Sprintf("no job %q on this coordinator (etcd prefix %s); GET /api/jobs lists jobs", name, c.keys.Prefix),
		http.StatusNotFound)
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b)
}

// InfoJSON is GET /api/info.
type InfoJSON struct {
	Version    string `json:"version"`
	Addr       string `json:"addr"`
	HTTPAddr   string `json:"http_addr"`
	Leader     bool   `json:"leader"`
	LeaderAddr string `json:"leader_addr"`
	Prefix     string `json:"prefix"`
}

func (c *Coordinator) serveInfo(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	info := InfoJSON{Version: c.cfg.Version, Addr: c.cfg.Addr, HTTPAddr: c.httpAddr.Load().(string), Leader: c.IsLeader(),
		Prefix: c.keys.Prefix}
	info.LeaderAddr, _ = LeaderAddr(ctx, c.cfg.Etcd, c.keys)
	writeJSON(w, info)
}

// serveEvents is the live stream (server-sent events): an "update" event
// (Update as JSON) now and after every change, at most every ?interval=
// (default sseInterval). With ?job=NAME it carries that job's detail and the
// points after ?since=STEP (default: the job's current last step, for a
// page that has just fetched the whole history), then after the last
// step it sent.
func (c *Coordinator) serveEvents(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	job := r.URL.Query().Get("job")
	since := int64(-2)
	if s := r.URL.Query().Get("since"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			http.Error(w, fmt.Sprintf("since=%q: want a step number", s), http.StatusBadRequest)
			return
		}
		since = v
	}
	interval := sseInterval
	if s := r.URL.Query().Get("interval"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < sseMinInterval {
			http.Error(w, fmt.Sprintf("interval=%q: want a duration of at least %v", s, sseMinInterval), http.StatusBadRequest)
			return
		}
		interval = d
	}
	if job != "" && since == -2 {
		since = c.history.lastStep(job)
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	ctx := r.Context()
	keep := time.NewTicker(sseKeepAlive)
	defer keep.Stop()
	sent := uint64(0)
	for {
		changed, ver := c.history.wait()
		if ver != sent {
			sent = ver
			u := Update{Jobs: c.history.jobList(c.cfg.Now())}
			if job != "" {
				if last := c.history.lastStep(job); last >= 0 && last < since {
					since = -1 // a restart replays steps: resend the whole history
				}
				u.Job, _ = c.history.jobDetail(job, c.cfg.Now())
				if hv, ok := c.history.history(job, since); ok {
					u.History = hv
					if n := len(hv.Points.Step); n > 0 {
						since = hv.Points.Step[n-1]
					}
				}
			}
			b, err := json.Marshal(u)
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "event: update\ndata: %s\n\n", b); err != nil {
				return
			}
			fl.Flush()
			select {
			case <-ctx.Done():
				return
			case <-time.After(interval):
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		}
	}
}
