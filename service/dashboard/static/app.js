// sensorcast dashboard: polls the REST API and draws one uPlot chart per stream.
// No build step, no framework, nothing loaded from the network but this service.
"use strict";
(() => {
  const POLL_MS = 2000;
  const HISTORY = 600; // points of actual values kept per chart
  const MAX_CHARTS = 30; // beyond this the page gets heavy on a gateway's browser
  const LIST_LIMIT = 1000; // streams listed: one page of GET /v1/streams (in id order)
  const state = {
    streams: new Map(), // id -> {info, actual: Map(t_s -> v), expected: Map(t_s -> [m, lo, hi]), forecast, lastMs}
    alerts: [],
    alertsError: "", // why the alert list is empty when GET /v1/alerts could not answer
    charts: {}, // id -> uPlot instance (read by the browser test)
    polls: 0,
    key: localStorage.getItem("sensorcast.apiKey") || "",
  };
  window.sensorcast = state;

  const $ = (sel) => document.querySelector(sel);
  const fmt = (x, d = 2) => (typeof x === "number" && isFinite(x) ? x.toFixed(d) : "–");
  // A number with its unit (GET /v1/streams and /v1/alerts: unit; null when unknown).
  const fmtU = (x, unit, d = 2) => { const t = fmt(x, d); return unit && t !== "–" ? `${t} ${unit}` : t; };
  // The unit of what a chart shows: a multivariate stream's first output feature's.
  const chartUnit = (rec) => (!rec.info ? null : rec.info.quantity !== "*" ? rec.info.unit
    : (rec.info.units && rec.features && rec.info.units[rec.features[0]]) || null);
  const encodeId = (id) => id.split("/").map(encodeURIComponent).join("/");
  // A device stream's feature as its own stream id: "dev;k=v" -> "dev/feature;k=v".
  const featureId = (id, f) => { const i = id.indexOf(";"); return i < 0 ? `${id}/${f}` : `${id.slice(0, i)}/${f}${id.slice(i)}`; };
  const fmtEta = (s) => (s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`);
  // A predicted breach of an operating limit (GET /v1/streams: predicted_breach), as text.
  // The feature is named for a multivariate (device) stream only: a single one is its quantity.
  const breachText = (s, b) => `${b.side === "lower" ? "below" : "above"} ${fmt(b.limit)}` +
    `${s.quantity === "*" && b.feature ? ` (${b.feature})` : ""} in ${fmtEta(b.eta_s)} (${Math.round(100 * b.probability)}%)`;

  class ApiError extends Error {
    constructor(path, status, detail) {
      super(`${path}: ${status} ${detail}`);
      this.status = status;
      this.detail = detail;
    }
  }

  async function fetchOk(path, init = {}) {
    const headers = state.key ? { "X-API-Key": state.key } : {};
    if (init.body) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { headers, cache: "no-store", ...init });
    if (r.status === 401 || r.status === 403) $("#keyform").hidden = false;
    if (!r.ok) {
      let detail = "";
      try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
      throw new ApiError(path, r.status, typeof detail === "string" ? detail : JSON.stringify(detail));
    }
    return r;
  }

  // Ack and silence controls, and dates (actions.js); a click refreshes at once.
  const { when, silenceControl, ackCell } = window.sensorcastActions({
    fetchOk, ApiError, encodeId, $, refresh: () => { clearTimeout(state.pollTimer); poll(); },
  });

  async function api(path) {
    return (await fetchOk(path)).json();
  }

  // Heat maps of sensor-grid streams (heatmap.js); state.heatmaps is read by the browser test.
  const heatmap = window.sensorcastHeatmap({ api, encodeId, featureId, $ });
  state.heatmaps = heatmap.maps;

  // A paged list: its items, and whether more pages follow (X-Next-Cursor).
  async function apiPage(path) {
    const r = await fetchOk(path);
    return { items: await r.json(), more: r.headers.get("X-Next-Cursor") !== null };
  }

  $("#keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("#apikey").value.trim();
    localStorage.setItem("sensorcast.apiKey", state.key);
    $("#keyform").hidden = true;
  });

  // ---- data ------------------------------------------------------------------------
  function record(id) {
    let rec = state.streams.get(id);
    if (!rec) {
      rec = { info: null, actual: new Map(), expected: new Map(), forecast: null, lastMs: null };
      state.streams.set(id, rec);
    }
    return rec;
  }

  function trim(map, keep) {
    if (map.size <= keep) return;
    const keys = [...map.keys()].sort((a, b) => a - b);
    for (const k of keys.slice(0, keys.length - keep)) map.delete(k);
  }

  async function updateStream(s) {
    const rec = record(s.id);
    rec.info = s;
    const q = rec.lastMs === null
      ? `last=${HISTORY}`
      : `since=${encodeURIComponent(new Date(rec.lastMs).toISOString())}`;
    // The store keeps a device (multivariate) stream's readings per quantity: its chart
    // shows the first output feature's, known from the first forecast.
    const pid = s.quantity !== "*" ? s.id : rec.features ? featureId(s.id, rec.features[0]) : null;
    const p = pid ? await api(`/v1/points/${encodeId(pid)}?${q}`) : { times_ms: [], values: [] };
    for (let i = 0; i < p.times_ms.length; i++) {
      rec.actual.set(p.times_ms[i] / 1000, p.values[i]);
      rec.lastMs = Math.max(rec.lastMs ?? 0, p.times_ms[i]);
    }
    trim(rec.actual, HISTORY);
    // The engine reports, for the last step, what it had forecast one step before:
    // collected over polls, that is the "expected" line and its band.
    if (s.last_time && s.expected !== null && s.expected !== undefined) {
      rec.expected.set(Date.parse(s.last_time) / 1000, [s.expected, s.lower, s.upper]);
      trim(rec.expected, HISTORY);
    }
    if (s.status === "warming" || s.status === "no_model") { rec.forecast = null; return; }
    try {
      const fc = await api(`/v1/streams/${encodeId(s.id)}/forecast`);
      rec.cadence = fc.cadence_s;
      rec.features = fc.features;
      rec.forecast = {
        times: fc.times.map((t) => Date.parse(t) / 1000),
        mean: fc.mean.map((r) => r[0]),
        lower: fc.lower ? fc.lower.map((r) => r[0]) : null,
        upper: fc.upper ? fc.upper.map((r) => r[0]) : null,
      };
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 409)) throw e; // 409: still warming
    }
  }

  // ---- rendering -------------------------------------------------------------------
  function renderSummary(streams, more) {
    const n = { warming: 0, ok: 0, firing: 0 };
    for (const s of streams) n[s.status] = (n[s.status] || 0) + 1;
    $("#summary").textContent =
      `${streams.length} streams: ${n.ok} ok, ${n.warming} warming, ${n.firing} firing` +
      (n.no_model ? `, ${n.no_model} with no model` : "") +
      (more ? ` (the first ${streams.length} by id; more are not listed)` : "");
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function badge(s) {
    const b = document.createElement("span");
    b.className = `badge ${s.status}`;
    b.textContent = s.status === "warming" ? `warming ${s.warm_up.have}/${s.warm_up.need}`
      : s.status === "no_model" ? s.warm_up.message : s.status; // "no model matches": stored, not forecast
    return b;
  }

  function renderTable(streams) {
    const body = $("#streams tbody");
    body.replaceChildren();
    for (const s of streams) {
      const tr = document.createElement("tr");
      tr.dataset.stream = s.id;
      const b = s.predicted_breach;
      const cells = [s.id, null, fmtU(s.last_value, s.unit), fmtU(s.expected, s.unit), fmt(s.score), b ? breachText(s, b) : "–",
        s.model ? `${s.model}/${s.model_version}` : "–"];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        if (i === 1) td.append(badge(s));
        else td.textContent = text;
        if (i >= 2 && i <= 4) td.className = "num";
        if (i === 5 && b) td.className = "breach";
        tr.append(td);
      });
      tr.cells[1].append(...silenceControl(s));
      body.append(tr);
    }
  }

  // One row per alert event: which check fired and what kind of event it was, when the
  // condition began (onset), the numbers. The event's reason (a resolution's) is its tooltip.
  function renderAlerts() {
    const body = $("#alerts tbody");
    body.replaceChildren();
    if (!state.alerts.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 10;
      td.className = "muted";
      td.textContent = state.alertsError || "none yet";
      tr.append(td);
      body.append(tr);
      return;
    }
    for (const a of state.alerts) {
      const tr = document.createElement("tr");
      tr.dataset.stream = a.stream_id;
      tr.dataset.check = a.check;
      if (a.id !== null && a.id !== undefined) tr.dataset.id = String(a.id);
      const cells = [a.state, a.stream_id, a.check, a.kind || "–", when(a.time), when(a.onset_time),
        fmtU(a.value, a.unit), fmtU(a.expected, a.unit), fmt(a.score, 1), null];
      const names = ["state", "stream", "check", "kind", "time", "onset", "value", "expected", "score", "ack"];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        if (text !== null) td.textContent = text;
        td.className = i === 0 ? a.state : i >= 6 && i <= 8 ? `${names[i]} num` : names[i];
        tr.append(td);
      });
      tr.cells[4].title = a.time || "";
      if (a.onset_time) tr.cells[5].title = a.onset_time;
      tr.cells[9].append(...ackCell(a));
      if (a.extra && a.extra.reason) tr.title = `reason: ${a.extra.reason}` + (a.extra.held_by ? ` (${a.extra.held_by})` : "");
      if (a.lower !== null || a.upper !== null) tr.cells[7].title = `band [${fmt(a.lower)}, ${fmt(a.upper)}]`;
      body.append(tr);
    }
  }

  // A column for the chart's x positions from a sparse series (time -> value): values
  // between two points closer than maxSpan seconds are interpolated, wider gaps stay
  // null, so a line never bridges a real gap (missing data, the page not polling).
  function column(x, map, maxSpan, pick = (v) => v) {
    const keys = [...map.keys()].sort((a, b) => a - b);
    const out = new Array(x.length).fill(null);
    let j = 0;
    x.forEach((t, i) => {
      while (j < keys.length && keys[j] < t) j++;
      if (j < keys.length && keys[j] === t) { out[i] = pick(map.get(t)); return; }
      const lo = keys[j - 1], hi = keys[j];
      if (lo === undefined || hi === undefined || hi - lo > maxSpan) return;
      const a = pick(map.get(lo)), b = pick(map.get(hi));
      if (a === null || b === null || a === undefined || b === undefined) return;
      out[i] = a + (b - a) * (t - lo) / (hi - lo);
    });
    return out;
  }

  function chartData(id, rec) {
    const xs = new Set([...rec.actual.keys()]);
    const t0 = Math.min(...rec.actual.keys());
    for (const t of rec.expected.keys()) if (t >= t0) xs.add(t);
    const fc = rec.forecast;
    if (fc) for (const t of fc.times) xs.add(t);
    const marks = new Map();
    for (const a of state.alerts) {
      if (a.stream_id === id && a.state === "firing" && a.value !== null) {
        const t = a.ts_ns / 1e9;
        if (t >= t0) { xs.add(t); marks.set(t, a.value); }
      }
    }
    const x = [...xs].sort((a, b) => a - b);
    const cadence = rec.cadence || 1;
    const act = column(x, rec.actual, 2.5 * cadence);
    // Expected values arrive once per poll: bridge a few polls, not a page left asleep.
    const span = Math.max(3 * POLL_MS / 1000, 2.5 * cadence);
    const exp = column(x, rec.expected, span, (e) => e[0]);
    const lo = column(x, rec.expected, span, (e) => e[1]);
    const hi = column(x, rec.expected, span, (e) => e[2]);
    const col = () => new Array(x.length).fill(null);
    const [fm, flo, fhi, mk, lim] = [col(), col(), col(), col(), col()];
    const fIdx = fc ? new Map(fc.times.map((t, i) => [t, i])) : new Map();
    x.forEach((t, i) => {
      const k = fIdx.get(t);
      if (k !== undefined) {
        fm[i] = fc.mean[k];
        if (fc.lower) { flo[i] = fc.lower[k]; fhi[i] = fc.upper[k]; }
      }
      if (marks.has(t)) mk[i] = marks.get(t);
    });
    // The limit a breach is predicted of, drawn across the chart while it is predicted.
    // Charts show the first output feature: a multivariate stream's limit only when it is that one's.
    const b = rec.info && rec.info.predicted_breach;
    const charted = rec.info && (rec.info.quantity !== "*" || (rec.features && b && b.feature === rec.features[0]));
    if (b && b.limit !== null && charted) lim.fill(b.limit);
    return [x, act, exp, lo, hi, fm, flo, fhi, mk, lim];
  }

  function makeChart(id, el) {
    // Gaps are decided in column(); the forecast's points are contiguous anyway.
    const line = (label, stroke, extra = {}) => ({ label, stroke, width: 1.5, spanGaps: false, points: { show: false }, ...extra });
    const opts = {
      width: Math.max(300, el.clientWidth - 8),
      height: 200,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      series: [
        {},
        line("actual", "#2b6cb0"),
        line("expected", "#805ad5", { dash: [4, 3], width: 1 }),
        line("lower", "rgba(128,90,213,0.35)", { width: 0.5 }),
        line("upper", "rgba(128,90,213,0.35)", { width: 0.5 }),
        line("forecast", "#dd6b20", { width: 2, spanGaps: true }),
        line("forecast lower", "rgba(221,107,32,0.4)", { width: 0.5, spanGaps: true }),
        line("forecast upper", "rgba(221,107,32,0.4)", { width: 0.5, spanGaps: true }),
        { label: "alert", stroke: "#c53030", fill: "#c53030", paths: () => null, points: { show: true, size: 10, fill: "#c53030" } },
        line("limit", "#c53030", { dash: [6, 4], width: 1 }),
      ],
      bands: [
        { series: [4, 3], fill: "rgba(128,90,213,0.15)" },
        { series: [7, 6], fill: "rgba(221,107,32,0.15)" },
      ],
    };
    return new uPlot(opts, [[], [], [], [], [], [], [], [], [], []], el);
  }

  function drawCharts() {
    const box = $("#charts");
    const ids = [...state.streams.keys()].sort().slice(0, MAX_CHARTS);
    for (const id of ids) {
      const rec = state.streams.get(id);
      if (!rec.actual.size) continue;
      let u = state.charts[id];
      if (!u) {
        const card = document.createElement("div");
        card.className = "chart";
        card.dataset.stream = id;
        const h = document.createElement("h3");
        const name = document.createElement("span");
        name.textContent = id;
        h.append(name, document.createElement("span"));
        const plot = document.createElement("div");
        card.append(h, plot);
        box.append(card);
        u = state.charts[id] = makeChart(id, plot);
      }
      const card = box.querySelector(`.chart[data-stream="${CSS.escape(id)}"]`);
      const head = [badge(rec.info)];
      const b = rec.info.predicted_breach;
      if (b) {
        const w = document.createElement("span");
        w.className = "breach";
        w.textContent = `breach ${breachText(rec.info, b)} `;
        head.unshift(w);
      }
      card.querySelector("h3 span:last-child").replaceChildren(...head);
      const unit = chartUnit(rec);
      card.querySelector("h3 span:first-child").textContent = unit ? `${id} (${unit})` : id;
      u.setData(chartData(id, rec));
    }
  }

  window.addEventListener("resize", () => {
    for (const u of Object.values(state.charts)) u.setSize({ width: Math.max(300, u.root.parentElement.clientWidth - 8), height: 200 });
  });

  async function poll() {
    try {
      const page = await apiPage(`/v1/streams?limit=${LIST_LIMIT}`);
      const streams = page.items;
      streams.sort((a, b) => a.id.localeCompare(b.id));
      await Promise.all(streams.slice(0, MAX_CHARTS).map(updateStream));
      // Without an alert history (503: not this process's role, or its file cannot be
      // read) the streams still update; the alert list says why it is empty.
      try {
        state.alerts = await api("/v1/alerts?limit=50");
        state.alertsError = "";
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 503)) throw e;
        state.alerts = [];
        state.alertsError = e.detail || e.message;
      }
      // Everything is redrawn from the same poll, so table, badges and charts agree.
      renderSummary(streams, page.more);
      renderTable(streams);
      renderAlerts();
      drawCharts();
      await heatmap.update(streams);
      $("#error").hidden = true;
    } catch (e) {
      $("#error").textContent = `cannot update: ${e.message}`;
      $("#error").hidden = false;
    } finally {
      state.polls += 1;
      document.body.dataset.polls = String(state.polls);
      clearTimeout(state.pollTimer); // a click's poll and the timer's must not both go on
      state.pollTimer = setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
