// Live dashboard: polls /dashboard/data with the API key and redraws in place (no reload).
// The key comes from the URL fragment (#key=..., never sent to the server or its logs) or a
// form, and is kept in sessionStorage for this tab only. #refresh=<ms> sets the poll interval.
"use strict";

const KEY_STORE = "patternalarm-api-key";
const hash = new URLSearchParams(location.hash.slice(1));
const refreshMs = Math.max(250, Number(hash.get("refresh")) || 2000);
if (hash.has("key")) {
  sessionStorage.setItem(KEY_STORE, hash.get("key"));
  hash.delete("key");
  history.replaceState(null, "", location.pathname + (hash.size ? "#" + hash : ""));
}
const PALETTE = ["#4263eb", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#f08c00",
                 "#5c940d", "#862e9c", "#364fc7"];
const charts = {};
const seenIncidents = new Set();
const chartUrls = new Map();  // load run id -> object URL of its chart (fetched with the key)
let timer = null;

const $ = (sel) => document.querySelector(sel);
const fmt = (v, digits = 0) =>
  v === null || v === undefined ? "–" : Number(v).toLocaleString("en", {maximumFractionDigits: digits});
const ms = (v) => (v === null || v === undefined ? "–" : fmt(v, v < 10 ? 1 : 0) + " ms");
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "–");

function api(path, options = {}) {
  const headers = {"X-API-Key": sessionStorage.getItem(KEY_STORE) || "", ...options.headers};
  return fetch(path, {...options, headers}).then((resp) => {
    if (resp.status === 401) throw Object.assign(new Error("API key refused"), {auth: true});
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
    return resp;
  });
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// Every chart spans the selected window up to now, however few points it has.
let xRange = [0, 1];

// One uPlot per chart element; rebuilt only when its set of series changes.
function draw(id, t, series, kind = "line") {
  const el = document.getElementById(id);
  const names = Object.keys(series);
  el.dataset.points = t.length;
  if (!t.length) {
    charts[id]?.destroy();
    delete charts[id];
    el.innerHTML = '<div class="empty">no data in this window</div>';
    return;
  }
  const data = [t, ...names.map((n) => series[n])];
  const signature = names.join("|");
  if (charts[id] && charts[id].signature === signature) {
    charts[id].setData(data);
    return;
  }
  charts[id]?.destroy();
  el.innerHTML = "";
  // Counts per bucket are steps; overlapping bars of several series would hide each other.
  const paths = kind === "steps" ? uPlot.paths.stepped({align: 1}) : undefined;
  const opts = {
    width: el.clientWidth, height: 200,
    legend: {live: false},
    scales: {x: {time: true, range: () => xRange},
             y: {range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1]}},
    series: [{}, ...names.map((n, i) => ({
      label: n, stroke: PALETTE[i % PALETTE.length], width: 1.5, paths,
      points: {show: true, size: 4},
    }))],
    axes: [{}, {size: 55}],
  };
  charts[id] = new uPlot(opts, data, el);
  charts[id].signature = signature;
}

function renderFeed(incidents) {
  const body = $("#feed tbody");
  body.replaceChildren();
  for (const inc of incidents) {
    const row = body.insertRow();
    row.dataset.key = inc.incident_key;
    if (seenIncidents.size && !seenIncidents.has(inc.incident_key)) row.className = "fresh";
    cell(row, time(inc.detected_at));
    cell(row, inc.domain);
    cell(row, inc.entity_id);
    cell(row, inc.detector);
    cell(row, inc.severity, "sev-" + inc.severity);
    cell(row, inc.score === null ? "–" : fmt(inc.score, 3));
    cell(row, fmt(inc.event_count));
    cell(row, inc.status, "status");
    const actions = row.insertCell();
    for (const next of ["acknowledged", "resolved"]) {
      if (inc.status === "resolved" || inc.status === next) continue;
      const btn = document.createElement("button");
      btn.className = "small";
      btn.textContent = next === "acknowledged" ? "ack" : "resolve";
      btn.onclick = () => api(`/incidents/${encodeURIComponent(inc.incident_key)}`, {
        method: "PATCH", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({status: next}),
      }).then(refresh, showError);
      actions.append(btn);
    }
  }
  incidents.forEach((inc) => seenIncidents.add(inc.incident_key));
}

function renderModels(models) {
  const body = $("#models tbody");
  body.replaceChildren();
  const domains = new Set([...Object.keys(models.stream), ...Object.keys(models.api)]);
  for (const domain of [...domains].sort()) {
    const row = body.insertRow();
    row.dataset.domain = domain;
    cell(row, domain);
    cell(row, models.stream[domain] ?? "–");
    cell(row, models.api[domain] ?? "–");
  }
}

// Precision and recall per detector over the window (GET /quality), next to the counts; only
// generated traffic has ground truth, so a domain without episodes shows its counts alone.
function renderQuality(q) {
  const body = $("#quality tbody");
  body.replaceChildren();
  for (const [domain, detectors] of Object.entries(q.domains)) {
    for (const [detector, s] of Object.entries(detectors)) {
      if (!s.incidents && !s.episodes) continue;
      const row = body.insertRow();
      row.dataset.domain = domain;
      row.dataset.detector = detector;
      cell(row, domain);
      cell(row, detector);
      cell(row, fmt(s.incidents));
      cell(row, s.precision === null ? "–" : fmt(s.precision, 3));
      cell(row, s.recall === null ? "–" : `${fmt(s.recall, 3)} (${s.detected}/${s.episodes})`);
    }
  }
}

function renderRuns(loadRuns, chaosRuns) {
  const load = $("#load-runs tbody");
  load.replaceChildren();
  for (const run of loadRuns) {
    const row = load.insertRow();
    row.dataset.run = run.run_id;
    cell(row, run.run_id);
    cell(row, run.mode);
    cell(row, run.status, "verdict-" + run.status);
    cell(row, fmt(run.throughput_per_min));
    cell(row, `${fmt(run.latency_p50_ms)} / ${fmt(run.latency_p99_ms)}`);
    cell(row, fmt(run.max_lag));
    cell(row, run.recall === null ? "–" : fmt(run.recall, 3));
  }
  const charts = $("#load-charts");
  for (const run of loadRuns.filter((r) => r.has_chart && !chartUrls.has(r.run_id))) {
    chartUrls.set(run.run_id, null);  // one fetch per run, even across overlapping polls
    api(`/dashboard/load-runs/${encodeURIComponent(run.run_id)}/chart`)
      .then((resp) => resp.blob())
      .then((blob) => {
        const img = new Image();
        img.alt = `load run ${run.run_id}`;
        img.dataset.run = run.run_id;
        img.src = URL.createObjectURL(blob);
        chartUrls.set(run.run_id, img.src);
        charts.append(img);
      }, () => chartUrls.delete(run.run_id));
  }
  const chaos = $("#chaos-runs tbody");
  chaos.replaceChildren();
  for (const run of chaosRuns) {
    const row = chaos.insertRow();
    cell(row, run.run_id);
    cell(row, run.scenario);
    cell(row, run.verdict ?? "running", "verdict-" + run.verdict);
    cell(row, fmt(run.events_lost));
    cell(row, fmt(run.incidents_duplicated));
    cell(row, run.recovery_s === null ? "–" : fmt(run.recovery_s, 1));
  }
}

function render(d) {
  $("#events-per-s").textContent = fmt(d.now.events_per_s, 1);
  $("#latency-p50").textContent = ms(d.now.latency_p50_ms);
  $("#latency-p99").textContent = ms(d.now.latency_p99_ms);
  $("#lag").textContent = fmt(d.now.lag);
  $("#last-batch").textContent = time(d.now.last_batch_at);
  const alerts = d.now.end_offsets_unavailable.map((b) => `Stream "${b.query}" cannot read ` +
    `the broker's end offsets since ${time(b.since)} and plans no batch: ${b.detail.error ?? ""}`)
    .concat(d.now.warnings);
  $("#blind").hidden = alerts.length === 0;
  $("#blind").textContent = alerts.join("\n");
  const to = Date.parse(d.generated_at) / 1000;
  xRange = [to - d.window_minutes * 60, to];
  const s = d.stream;
  draw("chart-throughput", s.t, {"events/s": s.events_per_s});
  draw("chart-latency", s.t, {p50: s.latency_p50_ms, p99: s.latency_p99_ms});
  draw("chart-lag", s.t, {lag: s.lag});
  draw("chart-domain", d.incidents_by_domain.t, d.incidents_by_domain.series, "steps");
  draw("chart-detector", d.incidents_by_detector.t, d.incidents_by_detector.series, "steps");
  renderFeed(d.incidents);
  renderModels(d.models);
  renderRuns(d.load_runs, d.chaos_runs);
}

function showError(err) {
  $("#state").className = "state error";
  $("#state").textContent = err.message;
  if (err.auth) askForKey();
}

function refresh() {
  const minutes = $("#window").value;
  api(`/quality?minutes=${minutes}`).then((resp) => resp.json()).then(renderQuality, showError);
  return api(`/dashboard/data?minutes=${minutes}`)
    .then((resp) => resp.json())
    .then((d) => {
      render(d);
      $("#state").className = "state ok";
      $("#state").textContent = "live, updated " + time(d.generated_at);
      document.body.dataset.updates = Number(document.body.dataset.updates) + 1;
    })
    .catch(showError);
}

function askForKey() {
  clearInterval(timer);
  $("#main").hidden = true;
  $("#key-form").hidden = false;
}

function start() {
  $("#key-form").hidden = true;
  $("#main").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, refreshMs);
}

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("#key-input").value.trim());
  start();
});
$("#window").addEventListener("change", refresh);
if (sessionStorage.getItem(KEY_STORE)) start(); else askForKey();
