// The overview's model cards: figures and live charts (uPlot, vendored in static/uplot) from /api/overview/models.
// Each card and its charts are made once and updated in place every 2 s. Loaded after portal.js.
"use strict";

const modelCards = {};  // instance id -> { card, charts, history }
const readings = { time: null, window: 600 };  // the latest answer's reading time and the history's length
const CHART_COLOURS = { prompt: "#3fb950", generation: "#4aa3ff", running: "#d29922", waiting: "#f85149" };

function rateText(value) { return value == null ? "–" : value >= 100 ? value.toFixed(0) : value.toFixed(1); }
function compact(value) {  // axis labels that fit: 950, 7.5k, 12k, 1.2M
  const size = Math.abs(value);
  if (size >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (size >= 1e3) return `${+(value / 1e3).toFixed(size >= 1e4 ? 0 : 1)}k`;
  return `${+value.toFixed(2)}`;
}
function chart(element, title, series) {
  const axis = { stroke: "#8b98a5", grid: { stroke: "#2a3541", width: 1 }, ticks: { stroke: "#2a3541", width: 1 } };
  return new uPlot({
    title, width: Math.max(200, element.clientWidth), height: 130,
    scales: { x: { time: true } }, cursor: { drag: { x: false, y: false } }, legend: { live: false },
    axes: [{ ...axis, space: 60 }, { ...axis, size: 44, values: (u, splits) => splits.map(compact) }],
    series: [{}, ...series.map(([label, colour]) => ({ label, stroke: colour, width: 1.5, spanGaps: false }))],
  }, [[], ...series.map(() => [])], element);
}
function modelCard(m) {
  const card = document.createElement("div");
  card.className = "card model";
  card.dataset.id = m.id;
  card.innerHTML = `<div><h3><span>${esc(m.id)}</span><span class="badge"></span></h3>
    <p class="muted small served"></p><dl class="kv figures"></dl></div>
    <div class="chart tokens"></div><div class="chart requests"></div>`;
  $("#model-cards").append(card);
  return { card, charts: [
    chart(card.querySelector(".tokens"), "Tokens/s", [["prompt", CHART_COLOURS.prompt], ["generation", CHART_COLOURS.generation]]),
    chart(card.querySelector(".requests"), "Requests", [["running", CHART_COLOURS.running], ["waiting", CHART_COLOURS.waiting]]),
  ] };
}
function updateModelCard(entry, m) {
  const { card, charts } = entry, f = m.figures || {};
  const badge = card.querySelector(".badge");
  badge.className = `badge ${m.state}`;
  badge.textContent = m.state;
  card.querySelector(".served").textContent = m.served_model_name;
  card.querySelector(".figures").innerHTML = `
    <dt>Prompt</dt><dd class="prompt-tps">${rateText(f.prompt_tps)} tokens/s</dd>
    <dt>Generation</dt><dd class="generation-tps">${rateText(f.generation_tps)} tokens/s</dd>
    <dt>Running / waiting</dt><dd class="requests">${f.running ?? "–"} / ${f.waiting ?? "–"}</dd>
    <dt>KV cache</dt><dd class="kv-cache">${f.kv_cache == null ? "–" : `${(f.kv_cache * 100).toFixed(1)} %`}</dd>
    <dt>First token p50</dt><dd class="ttft">${secondsText(f.ttft_p50)}</dd>`;
  // The answer has only the points after the previous one's time: append them, and drop what left the window.
  const h = entry.history ??= {}, start = readings.time - readings.window;
  Object.entries(m.history).forEach(([name, column]) => { h[name] = (h[name] || []).concat(column); });
  const old = h.t.findIndex((t) => t >= start);
  Object.keys(h).forEach((name) => { h[name] = old < 0 ? [] : h[name].slice(old); });
  charts[0].setData([h.t, h.prompt_tps, h.generation_tps]);
  charts[1].setData([h.t, h.running, h.waiting]);
}
async function overviewModels() {
  const since = readings.time == null ? "" : `?since=${readings.time}`;
  const answer = await api(`/api/overview/models${since}`), box = $("#model-cards");
  Object.assign(readings, { time: answer.time, window: answer.window });
  if (!answer.models.length) { box.innerHTML = `<p class="muted">No model yet: start one on the <a href="/models">Models</a> page.</p>`; }
  else box.querySelector(":scope > p")?.remove();
  const ids = new Set(answer.models.map((m) => m.id));
  Object.keys(modelCards).filter((id) => !ids.has(id)).forEach((id) => {
    modelCards[id].charts.forEach((c) => c.destroy());
    modelCards[id].card.remove();
    delete modelCards[id];
  });
  answer.models.forEach((m) => updateModelCard(modelCards[m.id] ??= modelCard(m), m));
}
function fitCharts() {
  Object.values(modelCards).forEach(({ card, charts }) => charts.forEach((c) => {
    c.setSize({ width: Math.max(200, c.root.parentElement.clientWidth), height: 130 });
  }));
}

const startOverview = pages.overview;
pages.overview = () => {
  startOverview();
  every(2000, () => overviewModels().catch(() => { /* the header says when the manager is unreachable */ }));
  let resizing;
  window.addEventListener("resize", () => { clearTimeout(resizing); resizing = setTimeout(fitCharts, 150); });
};
