// Sensor grids (8x8 infrared arrays...): a heat map of the latest frame of every stream
// whose model declares a grid (GET /v1/models: grid [H, W]; its features are the pixels
// in row-major order). The frame is each pixel's newest stored reading
// (GET /v1/points/{device}/{pixel}?last=1); a pixel whose newest reading is more than
// DEAD_STEPS cadences older than the frame's newest (a dead pixel) is drawn grey and crossed.
"use strict";
window.sensorcastHeatmap = ({ api, encodeId, featureId, $ }) => {
  const MAX_GRIDS = 4; // 64 small reads per grid per poll: a few grids at most
  const DEAD_STEPS = 3;
  const CELL = 28; // canvas pixels per sensor pixel
  const maps = {}; // stream id -> {grid, features, values, stale, min, max} (read by the browser test)
  let models = new Map(); // "name/version" -> model (GET /v1/models)

  // Cold (blue) to hot (red) through yellow: a readable thermal scale.
  function colour(f) {
    const stops = [[49, 54, 149], [69, 117, 180], [171, 217, 233], [255, 255, 191], [253, 174, 97], [215, 48, 39], [165, 0, 38]];
    const x = Math.min(1, Math.max(0, f)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(x));
    const t = x - i;
    const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * t));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  async function frame(s, m) {
    const reads = await Promise.all(m.features.map((f) =>
      api(`/v1/points/${encodeId(featureId(s.id, f))}?last=1`).catch(() => null)));
    const times = reads.map((p) => (p && p.times_ms.length ? p.times_ms[p.times_ms.length - 1] : null));
    const newest = Math.max(...times.filter((t) => t !== null));
    const values = reads.map((p, i) => (times[i] === null ? null : p.values[p.values.length - 1]));
    const stale = times.map((t) => t === null || newest - t > DEAD_STEPS * m.cadence_s * 1000);
    const seen = values.filter((v, i) => v !== null && !stale[i]);
    return { grid: m.grid, features: m.features, values, stale, min: Math.min(...seen), max: Math.max(...seen),
      time: isFinite(newest) ? new Date(newest).toISOString() : null };
  }

  function draw(id, hm) {
    const box = $("#grids");
    let card = box.querySelector(`.heatmap[data-stream="${CSS.escape(id)}"]`);
    if (!card) {
      card = document.createElement("div");
      card.className = "heatmap";
      card.dataset.stream = id;
      const h = document.createElement("h3");
      const canvas = document.createElement("canvas");
      const scale = document.createElement("p");
      scale.className = "muted";
      card.append(h, canvas, scale);
      box.append(card);
    }
    const [H, W] = hm.grid;
    const canvas = card.querySelector("canvas");
    canvas.width = W * CELL;
    canvas.height = H * CELL;
    const ctx = canvas.getContext("2d");
    const span = hm.max - hm.min || 1;
    hm.values.forEach((v, k) => {
      const r = Math.floor(k / W), c = k % W;
      const x = c * CELL, y = r * CELL;
      ctx.fillStyle = v === null || hm.stale[k] ? "#bbb" : colour((v - hm.min) / span);
      ctx.fillRect(x, y, CELL, CELL);
      if (v === null || hm.stale[k]) { // dead: crossed out
        ctx.strokeStyle = "#666";
        ctx.beginPath();
        ctx.moveTo(x + 4, y + 4); ctx.lineTo(x + CELL - 4, y + CELL - 4);
        ctx.moveTo(x + CELL - 4, y + 4); ctx.lineTo(x + 4, y + CELL - 4);
        ctx.stroke();
      }
    });
    canvas.title = `${H}x${W} pixels, row-major: ${hm.features[0]} top left`;
    card.querySelector("h3").textContent = `${id} (${H}x${W})`;
    const dead = hm.stale.filter(Boolean).length;
    card.querySelector("p").textContent = `${hm.min.toFixed(1)} (blue) .. ${hm.max.toFixed(1)} (red)` +
      (dead ? `, ${dead} pixel${dead > 1 ? "s" : ""} without recent readings (grey)` : "") +
      (hm.time ? `, ${hm.time.slice(11, 19)} UTC` : "");
  }

  // Called once per poll with the listed streams (already fetched by app.js).
  async function update(streams) {
    try {
      models = new Map((await api("/v1/models")).filter((m) => m.grid).map((m) => [`${m.name}/${m.version}`, m]));
    } catch (_) {
      models = new Map(); // no models route answering: no heat maps, the rest of the page goes on
    }
    const grids = streams.filter((s) => s.quantity === "*" && models.has(`${s.model}/${s.model_version}`))
      .slice(0, MAX_GRIDS);
    $("#grids").closest("section").hidden = grids.length === 0;
    const shown = new Set();
    for (const s of grids) {
      const hm = await frame(s, models.get(`${s.model}/${s.model_version}`));
      if (!hm.values.some((v) => v !== null)) continue;
      maps[s.id] = hm;
      shown.add(s.id);
      draw(s.id, hm);
    }
    for (const card of [...$("#grids").children]) if (!shown.has(card.dataset.stream)) card.remove();
    for (const id of Object.keys(maps)) if (!shown.has(id)) delete maps[id];
  }

  return { update, maps };
};
