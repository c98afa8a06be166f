// The coordinator's live dashboard. It reads the JSON API (GET /api/jobs,
// /api/jobs/NAME, /api/jobs/NAME/history, /api/jobs/NAME/timeline) and
// follows the server-sent events of /api/events; charts are uPlot.
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

// ---- formatting ----
const fmtNum = (v, d = 0) => (v == null || !isFinite(v) ? "–" : v.toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d }));
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

// ---- state ----
const state = {
  selected: null, // job name
  hist: null,     // HistoryView, grown by live updates
  events: [],
  stream: null,
  charts: {},
  clip: {}, // chart id → robust maximum of its values
};

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
        for (const e of state.events) {
          const x = Math.round(u.valToPos(e.step, "x", true));
          if (x < left || x > left + width) continue;
          ctx.save();
          ctx.strokeStyle = e.kind === "restart" ? "#d33c3c" : e.kind === "checkpoint" ? "#3fa66b" : "#6b7380";
          ctx.setLineDash([4, 3]);
          ctx.lineWidth = 1;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
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
  const v = arrays.flat().filter((x) => x != null && isFinite(x)).sort((a, b) => a - b);
  return v.length ? v[Math.min(v.length - 1, Math.floor(v.length * 0.99))] : 0;
}

function makeChart(id, series, axes, clip = false) {
  const box = document.getElementById(id);
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
  const data = [[], ...series.map(() => [])];
  const u = new uPlot(opts, data, box);
  state.charts[id] = u;
  return u;
}

function setChart(id, data) {
  const u = state.charts[id];
  if (!u) return;
  u.setData(data);
  document.getElementById(id).dataset.points = String(data[0].length);
}

function buildCharts(ranks) {
  for (const u of Object.values(state.charts)) u.destroy();
  state.charts = {};
  makeChart("chart-loss",
    [{ label: "loss", stroke: palette[0], scale: "loss", value: (u, v) => fmtNum(v, 4) },
     { label: "lr", stroke: palette[3], scale: "lr", value: (u, v) => (v == null ? "–" : v.toExponential(2)) }],
    [{ scale: "loss" }, { scale: "lr", side: 1, size: 70, grid: { show: false }, values: (u, vs) => vs.map((v) => fmtSci(v)) }]);
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
}

function renderCharts() {
  const h = state.hist;
  if (!h) return;
  const p = h.points;
  const rankIds = h.ranks.map((r) => r.rank);
  const have = state.charts["chart-ranks"] ? state.charts["chart-ranks"].series.length - 1 : -1;
  if (have !== rankIds.length) buildCharts(rankIds);
  setChart("chart-loss", [p.step, p.loss, p.lr]);
  setChart("chart-throughput", [p.step, p.tokens_per_sec, p.mfu]);
  // Ranks share their steps; align by step in case one lags.
  const xs = h.ranks.length ? h.ranks[0].step : [];
  const byStep = h.ranks.map((r) => {
    const m = new Map();
    r.step.forEach((s, i) => m.set(s, i));
    return m;
  });
  const busy = h.ranks.map((r, k) => xs.map((s) => {
    const i = byStep[k].get(s);
    return i == null ? null : (r.compute_s[i] + r.data_s[i]) * 1e3;
  }));
  state.clip["chart-ranks"] = robustMax(busy);
  setChart("chart-ranks", [xs, ...busy]);
  const mean = (field) => xs.map((s) => {
    let sum = 0, n = 0;
    h.ranks.forEach((r, k) => { const i = byStep[k].get(s); if (i != null) { sum += r[field][i]; n++; } });
    return n ? (sum / n) * 1e3 : null;
  });
  const split = [mean("compute_s"), mean("comm_s"), mean("wait_s"), mean("data_s")];
  state.clip["chart-split"] = robustMax(split);
  setChart("chart-split", [xs, ...split]);
}

const cap = (a) => (a.length > MAX_POINTS ? a.slice(a.length - MAX_POINTS) : a);

function mergeHistory(h) {
  state.events = h.events || [];
  if (!state.hist || h.since < 0 || state.hist.job !== h.job || state.hist.run !== h.run) {
    state.hist = h;
    return;
  }
  const cur = state.hist;
  for (const k of Object.keys(h.points)) cur.points[k] = cap(cur.points[k].concat(h.points[k]));
  for (const r of h.ranks) {
    const mine = cur.ranks.find((x) => x.rank === r.rank);
    if (!mine) { cur.ranks.push(r); continue; }
    for (const k of Object.keys(r)) if (Array.isArray(r[k])) mine[k] = cap(mine[k].concat(r[k]));
  }
  cur.ranks.sort((a, b) => a.rank - b.rank);
}

// ---- tables ----
let lastJobs = "";

function renderJobs(jobs) {
  const key = JSON.stringify(jobs) + state.selected;
  if (key === lastJobs) return;
  lastJobs = key;
  const tb = $("#jobs tbody");
  tb.textContent = "";
  $("#no-jobs").hidden = jobs.length > 0;
  for (const j of jobs) {
    const bar = el("div", { class: "progress" }, el("div", { style: `width:${Math.min(100, j.progress * 100).toFixed(1)}%` }));
    const tr = el("tr", { "data-job": j.name },
      el("td", { text: j.name }),
      el("td", {}, el("span", { class: `badge ${j.state}`, text: j.state })),
      el("td", { class: "num", text: String(j.generation) }),
      el("td", { class: "num", text: `${j.step}/${j.total_steps}` }),
      el("td", {}, bar),
      el("td", { class: "num", text: fmtETA(j.eta_s) }),
      el("td", { class: "num", text: fmtNum(j.tokens_per_sec) }),
      el("td", { class: "num", text: fmtPct(j.mfu) }),
      el("td", { class: "num", text: String(j.restarts) }),
      el("td", { class: "muted", text: j.message || "" }));
    if (j.name === state.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => select(j.name));
    tb.append(tr);
  }
}

function card(label, value) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value", text: value }));
}

let lastDetail = "";

function renderDetail(d) {
  if (!d) return;
  const key = JSON.stringify(d);
  if (key === lastDetail) return; // nothing changed: keep the DOM
  lastDetail = key;
  $("#job").hidden = false;
  $("#job-name").textContent = d.name;
  const st = $("#job-state");
  st.textContent = d.state;
  st.className = `badge ${d.state}`;
  const cards = $("#cards");
  cards.textContent = "";
  cards.append(
    card("step", `${d.step} / ${d.total_steps}`),
    card("ETA", fmtETA(d.eta_s)),
    card("tokens/s", fmtNum(d.tokens_per_sec)),
    card("MFU", fmtPct(d.mfu)),
    card("peak used for MFU", fmtFlops(d.peak_flops)),
    card("loss", fmtNum(d.loss, 4)),
    card("generation", String(d.generation)),
    card("restarts", String(d.restarts)));

  const tb = $("#ranks tbody");
  tb.textContent = "";
  const stragglers = d.ranks.filter((r) => r.straggler).map((r) => r.rank);
  $("#ranks-note").textContent = stragglers.length
    ? `— straggler: rank ${stragglers.join(", ")} (busy > ${d.straggler_ratio}× the median)`
    : `— mean of the latest steps; a rank busy > ${d.straggler_ratio}× the median is flagged`;
  const rows = [...d.ranks].sort((a, b) => a.order - b.order); // slowest first
  for (const r of rows) {
    const total = Math.max(r.step_s, r.compute_s + r.comm_s + r.wait_s + r.data_s) || 1;
    const seg = (cls, v) => el("span", { class: cls, style: `width:${((100 * v) / total).toFixed(1)}%`, title: `${cls} ${fmtMs(v)}` });
    const tr = el("tr", { "data-rank": String(r.rank) },
      el("td", { class: "num", text: String(r.rank) }),
      el("td", { text: `(${r.dp},${r.pp},${r.tp})` }),
      el("td", { text: r.addr || "–" }),
      el("td", { class: "num", text: String(r.step) }),
      el("td", { class: "num", text: fmtMs(r.step_s) }),
      el("td", {}, el("div", { class: "split" }, seg("compute", r.compute_s), seg("comm", r.comm_s), seg("wait", r.wait_s), seg("data", r.data_s))),
      el("td", { class: "num", text: fmtMs(r.compute_s) }),
      el("td", { class: "num", text: fmtMs(r.comm_s) }),
      el("td", { class: "num", text: fmtMs(r.wait_s) }),
      el("td", { class: "num", text: fmtMs(r.data_s) }),
      el("td", { class: "num", text: r.slowdown ? `${fmtNum(r.slowdown, 2)}×` : "–" }),
      el("td", {}, r.straggler ? el("span", { class: "flag", text: "STRAGGLER" }) : ""));
    if (r.straggler) tr.classList.add("straggler");
    tb.append(tr);
  }

  const kinds = [...new Set(d.ranks.flatMap((r) => Object.keys(r.memory_bytes || {})))].sort();
  const mh = $("#memory thead"), mb = $("#memory tbody");
  mh.textContent = "";
  mb.textContent = "";
  mh.append(el("tr", {}, el("th", { text: "Rank" }), ...kinds.map((k) => el("th", { class: "num", text: k })), el("th", { class: "num", text: "total" })));
  for (const r of d.ranks) {
    const m = r.memory_bytes || {};
    const sum = kinds.reduce((s, k) => s + (m[k] || 0), 0);
    mb.append(el("tr", {}, el("td", { class: "num", text: String(r.rank) }), ...kinds.map((k) => el("td", { class: "num", text: fmtBytes(m[k]) })),
      el("td", { class: "num", text: fmtBytes(sum) })));
  }

  const ev = $("#events");
  ev.textContent = "";
  for (const e of [...d.events].reverse()) {
    let text = `step ${e.step}: ${e.text}`;
    if (e.kind === "checkpoint") text += ` (${fmtBytes(e.bytes)}${e.seconds ? `, saved in ${fmtMs(e.seconds)}` : ""})`;
    ev.append(el("li", { class: e.kind, text }));
  }
  if (!d.events.length) ev.append(el("li", { class: "muted", text: "no checkpoints or restarts yet" }));
}

async function renderTimeline(name) {
  try {
    const t = await getJSON(`api/jobs/${encodeURIComponent(name)}/timeline`);
    $("#timeline").textContent = t.available && t.ranks.length
      ? `step ${t.step}: ${t.ranks.length} ranks`
      : t.reason || "no timeline";
  } catch (e) {
    $("#timeline").textContent = String(e.message);
  }
}

// ---- live ----
function follow(name) {
  if (state.stream) state.stream.close();
  const live = $("#live");
  let url = "api/events";
  if (name) {
    const last = state.hist && state.hist.points.step.length ? state.hist.points.step[state.hist.points.step.length - 1] : -1;
    url += `?job=${encodeURIComponent(name)}&since=${last}`;
  }
  const es = new EventSource(url);
  state.stream = es;
  es.onopen = () => { live.textContent = "live"; live.className = "badge live"; };
  es.onerror = () => { live.textContent = "reconnecting…"; live.className = "badge down"; };
  es.addEventListener("update", (msg) => {
    const u = JSON.parse(msg.data);
    if (!state.selected && u.jobs.length) {
      const running = u.jobs.find((j) => j.state === "RUNNING");
      const newest = [...u.jobs].sort((a, b) => b.submitted_ms - a.submitted_ms)[0];
      renderJobs(u.jobs);
      select((running || newest).name);
      return;
    }
    // Points are merged at once (each update carries only new ones); the
    // drawing waits for the next frame, which a hidden tab never runs, so
    // a page in the background costs nothing until it is shown again.
    if (u.history && u.history.job === state.selected) {
      mergeHistory(u.history);
      state.chartsDirty = true;
    }
    state.pending = u;
    if (!state.frame) state.frame = requestAnimationFrame(draw);
  });
}

function draw() {
  state.frame = 0;
  const u = state.pending;
  if (!u) return;
  renderJobs(u.jobs);
  if (u.job && u.job.name === state.selected) renderDetail(u.job);
  if (state.chartsDirty) {
    state.chartsDirty = false;
    renderCharts();
  }
}

async function select(name) {
  state.selected = name;
  history.replaceState(null, "", `#job=${encodeURIComponent(name)}`);
  for (const tr of document.querySelectorAll("#jobs tbody tr")) tr.classList.toggle("selected", tr.dataset.job === name);
  state.hist = null;
  try {
    const [d, h] = await Promise.all([
      getJSON(`api/jobs/${encodeURIComponent(name)}`),
      getJSON(`api/jobs/${encodeURIComponent(name)}/history`),
    ]);
    renderDetail(d);
    state.hist = null;
    mergeHistory(h);
    buildCharts(h.ranks.map((r) => r.rank));
    renderCharts();
  } catch (e) {
    $("#timeline").textContent = String(e.message);
  }
  renderTimeline(name);
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
  window.addEventListener("resize", () => {
    for (const [id, u] of Object.entries(state.charts)) u.setSize({ width: Math.max(300, document.getElementById(id).clientWidth), height: 240 });
  });
}

start();
