// The coordinator's live dashboard. It reads the JSON API (GET /api/jobs,
// /api/jobs/NAME, /api/jobs/NAME/history, /api/jobs/NAME/timeline) and
// follows the server-sent events of /api/events; charts are uPlot, the
// pipeline timeline is SVG boxes laid out from the data.
//
// A live page redraws every couple of seconds for as long as it is open,
// so every update touches only what changed: table cells are created once
// and their text rewritten only when it differs, a chart is redrawn only
// when its data changed and it is on screen, and a hidden tab closes its
// stream until it is shown again.
import uPlot from "uplot";

const MAX_POINTS = 2000; // per series kept in the browser

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
// Writes that skip themselves when nothing changed: a DOM write is what
// makes the browser restyle, lay out and repaint.
const setText = (n, s) => { if (n.textContent !== s) n.textContent = s; };
const setClass = (n, s) => { if (n.className !== s) n.className = s; };
const setWidth = (n, s) => { if (n.style.width !== s) n.style.width = s; };
const setHidden = (n, h) => { if (n.hidden !== h) n.hidden = h; };

// ---- formatting ----
// One formatter per number of digits: toLocaleString builds a new one on
// every call, which is most of the cost of redrawing the tables.
const numFormats = new Map();
const fmtNum = (v, d = 0) => {
  if (v == null || !isFinite(v)) return "–";
  let f = numFormats.get(d);
  if (!f) numFormats.set(d, (f = new Intl.NumberFormat("en-US", { maximumFractionDigits: d, minimumFractionDigits: d })));
  return f.format(v);
};
const fmtMs = (s) => (s == null || !isFinite(s) ? "–" : s < 1 ? `${fmtNum(s * 1e3, 1)} ms` : `${fmtNum(s, 2)} s`);
const fmtPct = (v) => (v == null || !isFinite(v) || v === 0 ? "–" : v < 0.01 ? `${(v * 100).toPrecision(2)}%` : `${fmtNum(v * 100, 1)}%`);
const fmtBytes = (b) => {
  if (!b) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return `${fmtNum(b, i ? 1 : 0)} ${u[i]}`;
};
const fmtETA = (s) => {
  if (!s || !isFinite(s)) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
};
const fmtSci = (v) => (v == null ? "" : v === 0 ? "0" : v.toExponential(2));
const fmtPctAxis = (v) => (v == null ? "" : `${(v * 100).toPrecision(2)}%`);
const fmtFlops = (f) => (f ? `${fmtNum(f / 1e9, 1)} GFLOP/s` : "not measured");
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// ---- state ----
const state = {
  selected: null, // job name
  hist: null,     // HistoryView, grown by live updates
  histVersion: 0, // bumped on every change of hist or events
  events: [],
  eventsKey: "",
  stream: null,
  pending: null,  // the latest update, drawn at the next frame
  frame: 0,
  charts: {},     // id → {u, drawn: histVersion drawn, visible}
  clip: {},       // chart id → robust maximum of its values
  timeline: null, // the last Timeline fetched
  jobKey: "",     // state and generation of the selected job, as last drawn
};
// For measurements (cmd/loom's TestDashboardCost): draws and their JS time.
// Times in ms of JavaScript: parsing and merging updates, drawing (of
// which setting chart data).
const stats = { updates: 0, parseMs: 0, draws: 0, drawMs: 0, charts: 0, chartMs: 0 };
window.loomStats = stats;

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
  return r.json();
}

// ---- charts ----
function markers() {
  return {
    hooks: {
      draw: [(u) => {
        const { ctx } = u;
        const { left, top, width, height } = u.bbox;
        const px = uPlot.pxRatio || 1;
        for (const e of state.events) {
          if (e.kind === "state") continue;
          const x = Math.round(u.valToPos(e.step, "x", true));
          if (x < left || x > left + width) continue;
          const restart = e.kind === "restart";
          ctx.save();
          ctx.strokeStyle = restart ? "#d33c3c" : "#3fa66b";
          ctx.setLineDash([4 * px, 3 * px]);
          ctx.lineWidth = px;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          if (restart) {
            // The reason beside the line: worker_lost, rank_failed, …
            ctx.fillStyle = "#d33c3c";
            ctx.font = `${10 * px}px system-ui, sans-serif`;
            ctx.textBaseline = "top";
            const label = e.reason || "restart";
            const w = ctx.measureText(label).width;
            ctx.fillText(label, x + 3 * px + w > left + width ? x - 3 * px - w : x + 3 * px, top + 2 * px);
          }
          ctx.restore();
        }
      }],
    },
  };
}

const palette = ["#3b7dd8", "#d33c3c", "#3fa66b", "#e0a030", "#8e5bd8", "#1aa3a3", "#b5487e", "#7a8a2a"];

// robustMax is the 99th percentile of the finite values of some arrays:
// the step-time charts clip at 1.5× it, so one stalled step (a paused
// worker, a checkpoint) does not flatten every other step to the axis.
function robustMax(arrays) {
  let n = 0;
  for (const a of arrays) n += a.length;
  const v = new Float64Array(n); // sorts numerically, without a comparator
  n = 0;
  for (const a of arrays) for (const x of a) if (x != null && isFinite(x)) v[n++] = x;
  if (!n) return 0;
  const w = v.subarray(0, n).sort();
  return w[Math.min(n - 1, Math.floor(n * 0.99))];
}

// Charts off screen are not redrawn until they scroll into view.
const seen = new IntersectionObserver((entries) => {
  for (const en of entries) {
    const c = state.charts[en.target.id];
    if (c) c.visible = en.isIntersecting;
  }
  if (entries.some((en) => en.isIntersecting)) schedule();
});

function makeChart(id, series, axes, clip = false) {
  const box = document.getElementById(id);
  const old = state.charts[id];
  if (old) old.u.destroy();
  box.textContent = "";
  const y = clip ? { y: { range: (u, lo, hi) => [0, Math.max(1e-9, Math.min(hi, 1.5 * (state.clip[id] || hi)))] } } : {};
  const opts = {
    width: Math.max(300, box.clientWidth),
    height: 240,
    scales: { x: { time: false }, ...y },
    series: [{ label: "step" }, ...series],
    axes: [{ label: "step" }, ...axes],
    legend: { live: true },
    plugins: [markers()],
  };
  const u = new uPlot(opts, [[], ...series.map(() => [])], box);
  state.charts[id] = { u, drawn: -1, visible: old ? old.visible : true, key: "" };
  seen.observe(box);
  return u;
}

function lossChart(withVal) {
  const s = [{ label: "train loss", stroke: palette[0], scale: "loss", value: (u, v) => fmtNum(v, 4) }];
  if (withVal) {
    s.push({ label: "validation loss", stroke: palette[1], width: 2, scale: "loss", spanGaps: true,
      points: { show: true, size: 6, fill: palette[1] }, value: (u, v) => fmtNum(v, 4) });
  }
  s.push({ label: "lr", stroke: palette[3], scale: "lr", value: (u, v) => (v == null ? "–" : v.toExponential(2)) });
  makeChart("chart-loss", s,
    [{ scale: "loss" }, { scale: "lr", side: 1, size: 70, grid: { show: false }, values: (u, vs) => vs.map((v) => fmtSci(v)) }]);
  state.charts["chart-loss"].key = withVal ? "val" : "";
}

function buildCharts(ranks) {
  lossChart(false);
  makeChart("chart-throughput",
    [{ label: "tokens/s", stroke: palette[0], scale: "tps", value: (u, v) => fmtNum(v) },
     { label: "MFU", stroke: palette[2], scale: "mfu", value: (u, v) => fmtPct(v) }],
    [{ scale: "tps", size: 60 }, { scale: "mfu", side: 1, size: 70, grid: { show: false }, values: (u, vs) => vs.map((v) => fmtPctAxis(v)) }]);
  makeChart("chart-ranks",
    ranks.map((r, i) => ({ label: `rank ${r}`, stroke: palette[i % palette.length], value: (u, v) => fmtNum(v, 2) })),
    [{}], true);
  makeChart("chart-split",
    [{ label: "compute", stroke: "#3b7dd8" }, { label: "comm", stroke: "#8e5bd8" },
     { label: "wait", stroke: "#e0a030" }, { label: "data", stroke: "#3fa66b" }].map((s) => ({ ...s, value: (u, v) => fmtNum(v, 2) })),
    [{}], true);
  state.charts["chart-ranks"].key = ranks.join(",");
}

// draws runs f (which returns the chart's data) and sets it when chart id
// is on screen and its data changed since it was last drawn.
function drawChart(id, f) {
  const c = state.charts[id];
  if (!c || c.drawn === state.histVersion || !c.visible) return;
  const t0 = performance.now();
  const data = f();
  c.u.setData(data);
  stats.chartMs += performance.now() - t0;
  c.drawn = state.histVersion;
  stats.charts++;
  const box = document.getElementById(id);
  const n = String(data[0].length);
  if (box.dataset.points !== n) box.dataset.points = n;
}

function renderCharts() {
  const h = state.hist;
  if (!h) return;
  const p = h.points;
  const rankIds = h.ranks.map((r) => r.rank);
  if (!state.charts["chart-ranks"] || state.charts["chart-ranks"].key !== rankIds.join(",")) buildCharts(rankIds);
  const withVal = p.val_loss && p.val_loss.some((v) => v != null);
  if ((state.charts["chart-loss"].key === "val") !== withVal) lossChart(withVal);
  drawChart("chart-loss", () => {
    const box = document.getElementById("chart-loss");
    const n = String(withVal ? p.val_loss.reduce((k, v) => k + (v != null), 0) : 0);
    if (box.dataset.valPoints !== n) box.dataset.valPoints = n;
    return withVal ? [p.step, p.loss, p.val_loss, p.lr] : [p.step, p.loss, p.lr];
  });
  drawChart("chart-throughput", () => [p.step, p.tokens_per_sec, p.mfu]);
  // Ranks share their steps; align by step when one lags.
  let cols = null;
  const aligned = () => {
    if (cols) return cols;
    const xs = h.ranks.length ? h.ranks[0].step : [];
    const same = h.ranks.every((r) => r.step.length === xs.length && r.step[0] === xs[0] && r.step[r.step.length - 1] === xs[xs.length - 1]);
    let at;
    if (same) at = (k, i) => i;
    else {
      const byStep = h.ranks.map((r) => new Map(r.step.map((s, i) => [s, i])));
      at = (k, i) => byStep[k].get(xs[i]);
    }
    const col = (f) => h.ranks.map((r, k) => xs.map((s, i) => { const j = at(k, i); return j == null ? null : f(r, j); }));
    const busy = col((r, j) => (r.compute_s[j] + r.data_s[j]) * 1e3);
    const mean = (field) => xs.map((s, i) => {
      let sum = 0, n = 0;
      h.ranks.forEach((r, k) => { const j = at(k, i); if (j != null) { sum += r[field][j]; n++; } });
      return n ? (sum / n) * 1e3 : null;
    });
    cols = { xs, busy, split: [mean("compute_s"), mean("comm_s"), mean("wait_s"), mean("data_s")] };
    return cols;
  };
  drawChart("chart-ranks", () => {
    const c = aligned();
    state.clip["chart-ranks"] = robustMax(c.busy);
    return [c.xs, ...c.busy];
  });
  drawChart("chart-split", () => {
    const c = aligned();
    state.clip["chart-split"] = robustMax(c.split);
    return [c.xs, ...c.split];
  });
}

const cap = (a) => (a.length > MAX_POINTS ? a.slice(a.length - MAX_POINTS) : a);

function setEvents(events) {
  events = events || [];
  const last = events[events.length - 1];
  const key = `${events.length}:${last ? `${last.t}:${last.step}:${last.seconds}` : ""}`;
  if (key === state.eventsKey) return false;
  state.eventsKey = key;
  state.events = events;
  return true;
}

// mergeHistory folds a HistoryView in: the whole of it, or the points
// after the ones held. It returns whether anything changed.
function mergeHistory(h) {
  const evChanged = setEvents(h.events);
  if (!state.hist || h.since < 0 || state.hist.job !== h.job || state.hist.run !== h.run) {
    state.hist = h;
    state.histVersion++;
    return true;
  }
  const cur = state.hist;
  let grew = false;
  if (h.points.step.length) {
    grew = true;
    for (const k of Object.keys(h.points)) cur.points[k] = cap((cur.points[k] || []).concat(h.points[k]));
  }
  for (const r of h.ranks) {
    const mine = cur.ranks.find((x) => x.rank === r.rank);
    if (!mine) { cur.ranks.push(r); grew = true; continue; }
    if (!r.step.length) continue;
    grew = true;
    for (const k of Object.keys(r)) if (Array.isArray(r[k])) mine[k] = cap(mine[k].concat(r[k]));
  }
  cur.ranks.sort((a, b) => a.rank - b.rank);
  if (grew || evChanged) state.histVersion++;
  return grew || evChanged;
}

// ---- tables ----
const jobRows = new Map(); // name → {tr, td: [cells], bar, badge}

function renderJobs(jobs) {
  const tb = $("#jobs tbody");
  setHidden($("#no-jobs"), jobs.length > 0);
  const names = new Set();
  let prev = null;
  for (const j of jobs) {
    names.add(j.name);
    let r = jobRows.get(j.name);
    if (!r) {
      const td = Array.from({ length: 10 }, (_, i) => el("td", { class: [2, 3, 5, 6, 7, 8].includes(i) ? "num" : "" }));
      const bar = el("div");
      const badge = el("span");
      td[1].append(badge);
      td[4].append(el("div", { class: "progress" }, bar));
      td[9].className = "muted";
      const tr = el("tr", { "data-job": j.name }, ...td);
      tr.addEventListener("click", () => select(j.name));
      r = { tr, td, bar, badge };
      jobRows.set(j.name, r);
    }
    const { td } = r;
    setText(td[0], j.name);
    setText(r.badge, j.state);
    setClass(r.badge, `badge ${j.state}`);
    setText(td[2], String(j.generation));
    setText(td[3], `${j.step}/${j.total_steps}`);
    setWidth(r.bar, `${Math.min(100, j.progress * 100).toFixed(1)}%`);
    setText(td[5], fmtETA(j.eta_s));
    setText(td[6], fmtNum(j.tokens_per_sec));
    setText(td[7], fmtPct(j.mfu));
    setText(td[8], String(j.restarts));
    setText(td[9], j.message || "");
    setClass(r.tr, j.name === state.selected ? "selected" : "");
    if (r.tr.previousSibling !== prev || r.tr.parentNode !== tb) tb.insertBefore(r.tr, prev ? prev.nextSibling : tb.firstChild);
    prev = r.tr;
  }
  for (const [name, r] of jobRows) if (!names.has(name)) { r.tr.remove(); jobRows.delete(name); }
}

const cardSpecs = [
  ["step", (d) => `${d.step} / ${d.total_steps}`],
  ["ETA", (d) => fmtETA(d.eta_s)],
  ["tokens/s", (d) => fmtNum(d.tokens_per_sec)],
  ["MFU", (d) => fmtPct(d.mfu)],
  ["peak used for MFU", (d) => fmtFlops(d.peak_flops)],
  ["loss", (d) => fmtNum(d.loss, 4)],
  ["validation loss", (d) => (d.val_loss ? `${fmtNum(d.val_loss, 4)} (step ${d.val_step})` : "–")],
  ["generation", (d) => String(d.generation)],
  ["restarts", (d) => String(d.restarts)],
];
let cardValues = null;

const rankRows = new Map(); // rank → {tr, td, seg}
let memoryKey = "";

function renderDetail(d) {
  if (!d) return;
  setHidden($("#job"), false);
  setText($("#job-name"), d.name);
  const st = $("#job-state");
  setText(st, d.state);
  setClass(st, `badge ${d.state}`);
  if (!cardValues) {
    const cards = $("#cards");
    cardValues = cardSpecs.map(([label]) => {
      const v = el("div", { class: "value" });
      cards.append(el("div", { class: "card", "data-card": label }, el("div", { class: "label", text: label }), v));
      return v;
    });
  }
  cardSpecs.forEach(([, f], i) => setText(cardValues[i], f(d)));

  const stragglers = d.ranks.filter((r) => r.straggler).map((r) => r.rank);
  setText($("#ranks-note"), stragglers.length
    ? `— straggler: rank ${stragglers.join(", ")} (busy > ${d.straggler_ratio}× the median)`
    : `— mean of the latest steps; a rank busy > ${d.straggler_ratio}× the median is flagged`);
  renderRanks(d.ranks);
  renderMemory(d.ranks);
  renderEvents(d.events);
  // Ranks save their timeline when a run (or a generation) ends: fetch it
  // again when the job's state or generation changes.
  const key = `${d.name}:${d.state}:${d.generation}`;
  if (key !== state.jobKey) {
    state.jobKey = key;
    fetchTimeline(d.name);
  }
}

function renderRanks(ranks) {
  const tb = $("#ranks tbody");
  const rows = [...ranks].sort((a, b) => a.order - b.order); // slowest first
  const present = new Set();
  let prev = null;
  for (const r of rows) {
    present.add(r.rank);
    let x = rankRows.get(r.rank);
    if (!x) {
      const td = Array.from({ length: 12 }, (_, i) => el("td", { class: [0, 3, 4, 6, 7, 8, 9, 10].includes(i) ? "num" : "" }));
      const seg = ["compute", "comm", "wait", "data"].map((c) => el("span", { class: c }));
      td[5].append(el("div", { class: "split" }, ...seg));
      const flag = el("span", { class: "flag", text: "STRAGGLER" });
      x = { tr: el("tr", { "data-rank": String(r.rank) }, ...td), td, seg, flag };
      rankRows.set(r.rank, x);
    }
    const { td, seg } = x;
    setText(td[0], String(r.rank));
    setText(td[1], `(${r.dp},${r.pp},${r.tp})`);
    setText(td[2], r.addr || "–");
    setText(td[3], String(r.step));
    setText(td[4], fmtMs(r.step_s));
    const total = Math.max(r.step_s, r.compute_s + r.comm_s + r.wait_s + r.data_s) || 1;
    [r.compute_s, r.comm_s, r.wait_s, r.data_s].forEach((v, i) => {
      setWidth(seg[i], `${((100 * v) / total).toFixed(1)}%`);
      const title = `${seg[i].className} ${fmtMs(v)}`;
      if (seg[i].title !== title) seg[i].title = title;
    });
    setText(td[6], fmtMs(r.compute_s));
    setText(td[7], fmtMs(r.comm_s));
    setText(td[8], fmtMs(r.wait_s));
    setText(td[9], fmtMs(r.data_s));
    setText(td[10], r.slowdown ? `${fmtNum(r.slowdown, 2)}×` : "–");
    if (r.straggler !== (x.flag.parentNode === td[11])) {
      if (r.straggler) td[11].append(x.flag);
      else x.flag.remove();
    }
    setClass(x.tr, r.straggler ? "straggler" : "");
    if (x.tr.previousSibling !== prev || x.tr.parentNode !== tb) tb.insertBefore(x.tr, prev ? prev.nextSibling : tb.firstChild);
    prev = x.tr;
  }
  for (const [rank, x] of rankRows) if (!present.has(rank)) { x.tr.remove(); rankRows.delete(rank); }
}

function renderMemory(ranks) {
  const key = JSON.stringify(ranks.map((r) => [r.rank, r.memory_bytes]));
  if (key === memoryKey) return;
  memoryKey = key;
  const kinds = [...new Set(ranks.flatMap((r) => Object.keys(r.memory_bytes || {})))].sort();
  const mh = $("#memory thead"), mb = $("#memory tbody");
  mh.textContent = "";
  mb.textContent = "";
  mh.append(el("tr", {}, el("th", { text: "Rank" }), ...kinds.map((k) => el("th", { class: "num", text: k })), el("th", { class: "num", text: "total" })));
  for (const r of ranks) {
    const m = r.memory_bytes || {};
    const sum = kinds.reduce((s, k) => s + (m[k] || 0), 0);
    mb.append(el("tr", {}, el("td", { class: "num", text: String(r.rank) }), ...kinds.map((k) => el("td", { class: "num", text: fmtBytes(m[k]) })),
      el("td", { class: "num", text: fmtBytes(sum) })));
  }
}

let eventsListKey = null;

function renderEvents(events) {
  const last = events[events.length - 1];
  const key = `${events.length}:${last ? `${last.t}:${last.step}:${last.seconds}:${last.text}` : ""}`;
  if (key === eventsListKey) return;
  eventsListKey = key;
  if (setEvents(events)) { state.histVersion++; state.chartsDirty = true; }
  const ev = $("#events");
  ev.textContent = "";
  for (const e of [...events].reverse()) {
    let text = `step ${e.step}: ${e.text}`;
    if (e.kind === "checkpoint") text += ` (${fmtBytes(e.bytes)}${e.seconds ? `, saved in ${fmtMs(e.seconds)}` : ""})`;
    const li = el("li", { class: e.kind, text });
    if (e.reason) li.dataset.reason = e.reason;
    ev.append(li);
  }
  if (!events.length) ev.append(el("li", { class: "muted", text: "no checkpoints or restarts yet" }));
}

// ---- the pipeline timeline ----
// Each rank is a row of lanes: compute (F, B, W and the waits for a
// pipeline message between them), sends, receives, and collectives with
// the optimizer step. Boxes are positioned from the events' times; this
// is layout, not a charting library.
const TL_LANES = [
  { id: "compute", label: "", cats: ["compute", "wait"] },
  { id: "send", label: "send", cats: ["send"] },
  { id: "recv", label: "recv", cats: ["recv"] },
  { id: "coll", label: "collective", cats: ["collective", "optimizer"] },
];
const TL_KINDS = [
  ["F", "forward"], ["B", "backward"], ["W", "weight gradient"], ["wait", "waiting for a message"],
  ["send", "send"], ["recv", "receive"], ["collective", "collective"], ["optimizer", "optimizer step"],
];

function tlClass(a) {
  const cat = a.cat || (["F", "B", "W"].includes(a.kind) ? "compute" : a.kind);
  if (cat === "compute") return ["F", "B", "W"].includes(a.kind) ? a.kind : "F";
  return ["wait", "send", "recv", "collective", "optimizer"].includes(cat) ? cat : "collective";
}

function laneOf(a) {
  const cls = tlClass(a);
  if (["F", "B", "W", "wait"].includes(cls)) return "compute";
  if (cls === "send") return "send";
  if (cls === "recv") return "recv";
  return "coll";
}

// niceStep is a 1, 2 or 5 × 10^k step that cuts span into about n ticks.
function niceStep(span, n) {
  const raw = span / n;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

async function fetchTimeline(name) {
  try {
    const t = await getJSON(`api/jobs/${encodeURIComponent(name)}/timeline`);
    if (name !== state.selected) return;
    state.timeline = t;
    renderTimeline();
  } catch (e) {
    setText($("#timeline-info"), String(e.message));
  }
}

function renderTimeline() {
  const t = state.timeline;
  const sec = $("#timeline-section");
  if (!t || t.pp <= 1) { setHidden(sec, true); return; }
  setHidden(sec, false);
  const info = $("#timeline-info"), box = $("#timeline");
  const shape = `${t.schedule}, pp ${t.pp}${t.virtual_stages > 1 ? ` × ${t.virtual_stages} virtual stages` : ""}, ${t.micro_batches} micro-batches`;
  if (!t.available || !t.ranks.length) {
    info.textContent = `${shape} — ${t.reason || "no timeline"}`;
    box.textContent = "";
    return;
  }
  const trace = `api/jobs/${encodeURIComponent(t.job)}/timeline.json`;
  info.innerHTML = `step ${t.step} · ${esc(shape)} · bubble <b>${fmtPct(t.bubble)}</b> measured` +
    (t.simulated_bubble ? ` (the simulator predicts ${fmtPct(t.simulated_bubble)} for these pass times)` : "") +
    ` · <a href="${trace}" download="${esc(t.job)}-timeline.json">Chrome trace</a> (opens in <a href="https://ui.perfetto.dev" target="_blank" rel="noopener">Perfetto</a>)`;

  let t0 = Infinity, t1 = -Infinity;
  const used = new Set();
  for (const r of t.ranks) for (const a of r.actions) {
    t0 = Math.min(t0, a.start_s);
    t1 = Math.max(t1, a.end_s);
    used.add(laneOf(a));
  }
  const lanes = TL_LANES.filter((l) => used.has(l.id));
  const span = Math.max(1e-9, t1 - t0);
  const W = Math.max(500, box.clientWidth), left = 92, right = 64, axisH = 22, laneH = 18, gap = 8;
  const plotW = W - left - right;
  const x = (s) => left + ((s - t0) / span) * plotW;
  const rowH = lanes.length * laneH;
  const H = axisH + t.ranks.length * (rowH + gap);
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" class="tl">`];
  // The time axis, in ms from the step's first event.
  const step = niceStep(span * 1e3, 10);
  for (let ms = 0; ms <= span * 1e3 + 1e-9; ms += step) {
    const px = x(t0 + ms / 1e3).toFixed(1);
    parts.push(`<line class="tl-grid" x1="${px}" x2="${px}" y1="${axisH - 4}" y2="${H}"/>`,
      `<text class="tl-tick" x="${px}" y="${axisH - 8}">${fmtNum(ms, step < 1 ? 1 : 0)} ms</text>`);
  }
  t.ranks.forEach((r, ri) => {
    const y0 = axisH + ri * (rowH + gap);
    let busy = 0;
    parts.push(`<g class="tl-rank" data-rank="${r.rank}">`,
      `<rect class="tl-row" x="${left}" y="${y0}" width="${plotW}" height="${rowH}"/>`,
      `<text class="tl-label" x="4" y="${y0 + laneH - 5}">rank ${r.rank}</text>`);
    lanes.forEach((l, li) => {
      if (l.label) parts.push(`<text class="tl-lane" x="${left - 6}" y="${y0 + li * laneH + laneH - 5}">${l.label}</text>`);
    });
    for (const a of r.actions) {
      const cls = tlClass(a);
      const li = lanes.findIndex((l) => l.id === laneOf(a));
      const xa = x(a.start_s), w = Math.max(0.75, x(a.end_s) - xa);
      const y = y0 + li * laneH + 1;
      if (["F", "B", "W"].includes(cls)) busy += a.end_s - a.start_s;
      const dur = (a.end_s - a.start_s) * 1e3;
      const title = `rank ${r.rank} · ${a.name} · ${a.micro >= 0 ? `micro-batch ${a.micro}` : ""}${a.stage >= 0 ? `, stage ${a.stage}` : ""} · ${fmtNum((a.start_s - t0) * 1e3, 2)}–${fmtNum((a.end_s - t0) * 1e3, 2)} ms (${fmtNum(dur, 2)} ms)`;
      parts.push(`<rect class="tl-box tl-${cls}" x="${xa.toFixed(2)}" y="${y}" width="${w.toFixed(2)}" height="${laneH - 2}"><title>${esc(title)}</title></rect>`);
      // Micro-batch labels where they fit.
      const label = ["F", "B", "W"].includes(cls) ? `${cls}${a.micro}` : a.micro >= 0 && cls !== "wait" ? String(a.micro) : "";
      if (label && w >= 7 * label.length + 2) {
        parts.push(`<text class="tl-text" x="${(xa + w / 2).toFixed(2)}" y="${y + laneH - 6}">${label}</text>`);
      }
    }
    parts.push(`<text class="tl-busy" x="${W - right + 6}" y="${y0 + laneH - 5}">busy ${fmtNum((100 * busy) / span, 0)}%</text>`, "</g>");
  });
  parts.push("</svg>");
  box.innerHTML = parts.join("");
  const legend = $("#timeline-legend");
  if (!legend.childNodes.length) {
    for (const [k, label] of TL_KINDS) legend.append(el("span", {}, el("i", { class: `tl-${k}` }), label));
  }
}

// ---- live ----
function schedule() {
  if (!state.frame) state.frame = requestAnimationFrame(draw);
}

function lastStep() {
  const s = state.hist && state.hist.points.step;
  return s && s.length ? s[s.length - 1] : -1;
}

function follow(name) {
  if (state.stream) state.stream.close();
  state.stream = null;
  if (document.hidden) return; // resumed on visibilitychange
  const live = $("#live");
  let url = "api/events";
  const q = new URLSearchParams(location.search);
  const params = new URLSearchParams();
  if (q.get("interval")) params.set("interval", q.get("interval"));
  if (name) {
    params.set("job", name);
    params.set("since", String(lastStep()));
  }
  if ([...params].length) url += `?${params}`;
  const es = new EventSource(url);
  state.stream = es;
  es.onopen = () => { setText(live, "live"); setClass(live, "badge live"); };
  es.onerror = () => { setText(live, "reconnecting…"); setClass(live, "badge down"); };
  es.addEventListener("update", (msg) => {
    const t0 = performance.now();
    stats.updates++;
    try { onUpdate(JSON.parse(msg.data)); } finally { stats.parseMs += performance.now() - t0; }
  });
}

function onUpdate(u) {
  {
    if (!state.selected && u.jobs.length) {
      const running = u.jobs.find((j) => j.state === "RUNNING");
      const newest = [...u.jobs].sort((a, b) => b.submitted_ms - a.submitted_ms)[0];
      renderJobs(u.jobs);
      select((running || newest).name);
      return;
    }
    // Points are merged at once (each update carries only new ones); the
    // drawing waits for the next frame, which a hidden tab never runs.
    if (u.history && u.history.job === state.selected && mergeHistory(u.history)) state.chartsDirty = true;
    state.pending = u;
    schedule();
  }
}

function draw() {
  state.frame = 0;
  const t0 = performance.now();
  const u = state.pending;
  state.pending = null;
  if (u) {
    renderJobs(u.jobs);
    if (u.job && u.job.name === state.selected) renderDetail(u.job);
  }
  if (state.chartsDirty || Object.values(state.charts).some((c) => c.visible && c.drawn !== state.histVersion)) {
    state.chartsDirty = false;
    renderCharts();
  }
  stats.draws++;
  stats.drawMs += performance.now() - t0;
}

async function select(name) {
  state.selected = name;
  history.replaceState(null, "", `${location.search}#job=${encodeURIComponent(name)}`);
  for (const [n, r] of jobRows) setClass(r.tr, n === name ? "selected" : "");
  state.hist = null;
  state.timeline = null;
  state.jobKey = "";
  try {
    const [d, h] = await Promise.all([
      getJSON(`api/jobs/${encodeURIComponent(name)}`),
      getJSON(`api/jobs/${encodeURIComponent(name)}/history`),
    ]);
    state.hist = null;
    mergeHistory(h);
    renderDetail(d);
    renderCharts();
  } catch (e) {
    setText($("#timeline-info"), String(e.message));
  }
  follow(name);
}

async function start() {
  try {
    const info = await getJSON("api/info");
    $("#coordinator").textContent = `coordinator ${info.addr} · ${info.leader ? "leader" : `standby (leader ${info.leader_addr || "unknown"})`} · Loom ${info.version}`;
  } catch (e) {
    $("#coordinator").textContent = String(e.message);
  }
  const m = location.hash.match(/^#job=(.+)$/);
  if (m) select(decodeURIComponent(m[1]));
  else follow(null);
  // A hidden tab stops its stream (no parsing, no merging) and catches up
  // from its last step when shown again.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      if (state.stream) state.stream.close();
      state.stream = null;
    } else if (!state.stream) {
      follow(state.selected);
    }
  });
  let resizing = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const [id, c] of Object.entries(state.charts)) c.u.setSize({ width: Math.max(300, document.getElementById(id).clientWidth), height: 240 });
      renderTimeline();
    }, 100);
  });
}

start();
