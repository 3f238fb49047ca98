// The portal's behaviour: each page polls or streams /api and redraws its part. No framework.
"use strict";

const $ = (selector) => document.querySelector(selector);
const page = document.body.dataset.page;
const apiPort = document.body.dataset.apiPort;

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}
function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function duration(seconds) {
  if (seconds == null) return "–";
  const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}
async function api(path, options = {}) {
  const response = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body.detail || body || response.statusText);
  return body;
}
function every(ms, fn) { fn(); return setInterval(fn, ms); }
function bar(fraction) { return `<div class="bar"><span style="width:${Math.min(100, Math.max(0, fraction * 100)).toFixed(1)}%"></span></div>`; }
function publicBase(port) { return `${location.protocol}//${location.hostname}:${port}`; }

// --- header: overall health ----------------------------------------------------
async function health() {
  const dot = $("#health"), text = $("#health-text");
  try {
    const instances = await api("/api/instances");
    const states = instances.map((i) => i.state);
    const level = states.includes("failed") ? "bad" : states.some((s) => s !== "ready") ? "warn" : "ok";
    dot.className = `dot ${level}`;
    text.textContent = instances.length ? `${states.filter((s) => s === "ready").length}/${instances.length} models ready` : "no model";
  } catch (error) { dot.className = "dot bad"; text.textContent = "manager unreachable"; }
}

// --- overview ------------------------------------------------------------------
const history = {};
function sparkline(values) {
  const points = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * 100},${36 - (v / 100) * 34}`).join(" ");
  return `<svg class="spark" viewBox="0 0 100 36" preserveAspectRatio="none"><polyline points="${points}"/></svg>`;
}
async function overview() {
  const stats = await api("/api/stats");
  $("#gpus").innerHTML = stats.gpus.length ? stats.gpus.map((g) => {
    (history[g.index] ??= []).push(g.utilization ?? 0);
    if (history[g.index].length > 150) history[g.index].shift();
    return `<div class="card gpu"><h3>GPU ${g.index} <span class="muted small">${esc(g.name)}</span></h3>
      ${sparkline(history[g.index])}
      <dl class="kv"><dt>Utilization</dt><dd>${g.utilization ?? "–"} %</dd>
      <dt>Memory</dt><dd>${bytes(g.memory_used)} / ${bytes(g.memory_total)}</dd></dl>${bar(g.memory_used / g.memory_total)}
      <dl class="kv"><dt>Temperature</dt><dd>${g.temperature ?? "–"} °C</dd>
      <dt>Power</dt><dd>${g.power_draw?.toFixed(0) ?? "–"} / ${g.power_limit?.toFixed(0) ?? "–"} W</dd>
      <dt>Used by</dt><dd>${esc(g.instances.join(", ") || "–")}</dd></dl></div>`;
  }).join("") : `<div class="card"><h3>No GPU</h3><p class="muted">${esc(stats.gpu_reason)}</p></div>`;
  const { host } = stats;
  $("#host").innerHTML = `
    <div class="card"><h3>CPU</h3><dl class="kv"><dt>Cores</dt><dd>${host.cpu_count}</dd>
      <dt>Load</dt><dd>${host.load.map((l) => l.toFixed(2)).join(" · ")}</dd></dl>${bar(host.load[0] / host.cpu_count)}</div>
    <div class="card"><h3>Memory</h3><dl class="kv"><dt>Used</dt><dd>${bytes(host.memory.used)} / ${bytes(host.memory.total)}</dd></dl>
      ${bar(host.memory.used / host.memory.total)}</div>
    <div class="card"><h3>Workspace disk</h3><dl class="kv"><dt>Used</dt><dd>${bytes(host.disk.used)} / ${bytes(host.disk.total)}</dd>
      <dt>Path</dt><dd>${esc(host.disk.path)}</dd></dl>${bar(host.disk.used / host.disk.total)}</div>`;
  $("#updated").textContent = new Date().toLocaleTimeString();
}

// --- models --------------------------------------------------------------------
function snippets(instance) {
  const base = `${publicBase(apiPort)}${instance.id === "vllm" ? "" : `/instances/${instance.id}`}/v1`;
  const name = instance.served_model_name;
  const curl = `curl ${base}/chat/completions \\\n  -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\\n  -d '{"model": ${JSON.stringify(name)}, "messages": [{"role": "user", "content": "Hello"}]}'`;
  const python = `from openai import OpenAI\nclient = OpenAI(base_url="${base}", api_key=TOKEN)\nprint(client.chat.completions.create(model=${JSON.stringify(name)},\n      messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)`;
  return [["curl", curl], ["Python (openai)", python]].map(([title, code]) =>
    `<details><summary>${title} <button type="button" class="copy" data-code="${esc(code)}">Copy</button></summary><pre class="snippet">${esc(code)}</pre></details>`).join("");
}
function progress(lines) {
  const line = [...lines].reverse().find((l) => /\d+%\|/.test(l) || /Loading safetensors/.test(l));
  return line ? `<p class="small">Download / load: <code>${esc(line.trim().slice(0, 160))}</code></p>` : "";
}
function instanceCard(i) {
  const elapsed = (Date.now() / 1000) - i.since;
  const lines = i.last_log || [];
  let detail = "";
  if (i.state === "starting") {
    detail = `<p class="small">Starting for ${duration(elapsed)}</p>${progress(lines)}` +
      (lines.length ? `<pre class="lines">${esc(lines[lines.length - 1])}</pre>` : "");
  } else if (i.state === "failed") {
    detail = `<p class="small"><strong>Failed:</strong> ${esc(i.reason)}</p><pre class="lines">${esc(lines.slice(-12).join("\n"))}</pre>`;
  } else if (i.state === "ready" && apiPort) {
    detail = (i.reason ? `<p class="small muted">${esc(i.reason)}</p>` : "") + snippets(i);
  }
  return `<div class="card instance" data-id="${esc(i.id)}">
    <h3><span>${esc(i.id)}</span><span class="badge ${esc(i.state)}">${esc(i.state)}</span></h3>
    <dl class="kv"><dt>Model</dt><dd>${esc(i.model)}</dd><dt>Served as</dt><dd>${esc(i.served_model_name)}</dd>
    <dt>GPUs</dt><dd>${esc(i.gpus ? i.gpus.join(", ") : "automatic")}</dd><dt>Port</dt><dd>${i.port}</dd>
    <dt>Uptime</dt><dd>${duration(i.uptime)}</dd><dt>Restarts</dt><dd>${i.restarts}</dd></dl>
    ${detail}
    <div class="actions">
      ${["start", "stop", "restart"].map((a) => `<button type="button" data-action="${a}">${a[0].toUpperCase() + a.slice(1)}</button>`).join("")}
      <button type="button" data-action="swap">Swap…</button>
      <button type="button" class="danger" data-action="delete">Delete</button>
    </div></div>`;
}
async function models() {
  const instances = await api("/api/instances");
  const open = [...document.querySelectorAll("#instances details[open]")].map((d) => d.closest(".instance").dataset.id + d.querySelector("summary").textContent);
  $("#instances").innerHTML = instances.length ? instances.map(instanceCard).join("") : `<p class="muted">No model yet: start one below.</p>`;
  document.querySelectorAll("#instances details").forEach((d) => {
    if (open.includes(d.closest(".instance").dataset.id + d.querySelector("summary").textContent)) d.open = true;
  });
}
function splitArgs(text) {
  return (text.match(/"[^"]*"|'[^']*'|\S+/g) || []).map((a) => a.replace(/^(["'])(.*)\1$/, "$2"));
}
function setupModels() {
  $("#instances").addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.classList.contains("copy")) {
      event.preventDefault();
      await navigator.clipboard?.writeText(button.dataset.code);
      button.textContent = "Copied";
      return;
    }
    const id = button.closest(".instance").dataset.id, action = button.dataset.action;
    if (action === "swap") {
      const form = $("#swap");
      form.id.value = id;
      form.model.focus();
      return;
    }
    if (action === "delete" && !confirm(`Delete instance ${id}? Its engine stops.`)) return;
    button.disabled = true;
    try {
      await api(`/api/instances/${id}${action === "delete" ? "" : `/${action}`}`, { method: action === "delete" ? "DELETE" : "POST" });
    } catch (error) { alert(error.message); }
    models();
  });
  $("#swap").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target, result = $("#swap-result");
    const gpus = form.gpus.value.trim();
    const body = { model: form.model.value.trim(), args: splitArgs(form.args.value),
                   gpus: gpus ? gpus.split(",").map((g) => parseInt(g, 10)) : null };
    result.textContent = "Sending…";
    try {
      await api(`/api/instances/${encodeURIComponent(form.id.value.trim())}`, { method: "PUT", body: JSON.stringify(body) });
      result.textContent = `Accepted: ${form.id.value} is starting ${body.model}. Its progress shows above.`;
      models();
    } catch (error) { result.textContent = `Refused: ${error.message}`; }
  });
}

// --- logs ----------------------------------------------------------------------
const ANSI = /\x1b\[([0-9;]*)m/g;
function ansi(text) {
  let open = 0, out = "";
  let last = 0;
  for (const match of text.matchAll(ANSI)) {
    out += esc(text.slice(last, match.index));
    last = match.index + match[0].length;
    const codes = match[1].split(";").filter(Boolean).map(Number);
    if (!codes.length || codes.includes(0)) { out += "</span>".repeat(open); open = 0; }
    for (const code of codes) {
      if (code === 1 || (code >= 30 && code <= 37) || (code >= 90 && code <= 97)) {
        out += `<span class="${code === 1 ? "a-bold" : `a-${code >= 90 ? code - 60 : code}`}">`;
        open++;
      }
    }
  }
  return out + esc(text.slice(last)) + "</span>".repeat(open);
}
const logView = { name: null, start: 0, lines: [], paused: false, source: null };
function drawLog() {
  const filter = $("#log-filter").value.toLowerCase(), view = $("#log");
  const shown = filter ? logView.lines.filter((l) => l.toLowerCase().includes(filter)) : logView.lines;
  const atBottom = view.scrollTop + view.clientHeight >= view.scrollHeight - 30;
  view.innerHTML = shown.map(ansi).join("\n");
  if (!logView.paused && atBottom) view.scrollTop = view.scrollHeight;
}
async function readRange(name, start, end) {
  const response = await fetch(`/api/logs/${name}`, { headers: { Range: `bytes=${start}-${end}` } });
  return response.ok ? await response.text() : "";
}
async function openLog(name) {
  logView.source?.close();
  const info = (await api("/api/logs")).find((l) => l.name === name);
  const size = info ? info.size : 0;
  logView.name = name;
  logView.start = Math.max(0, size - 65536);
  const text = size ? await readRange(name, logView.start, size - 1) : "";
  logView.lines = text.split("\n");
  if (logView.start > 0) logView.lines.shift();  // a partial first line
  if (logView.lines.at(-1) === "") logView.lines.pop();
  $("#log-download").href = `/api/logs/${name}/download`;
  $("#log").scrollTop = 0;
  drawLog();
  $("#log").scrollTop = $("#log").scrollHeight;
  logView.source = new EventSource(`/api/logs/${name}/stream?offset=${size}`);
  logView.source.onmessage = (event) => {
    logView.lines.push(event.data);
    if (logView.lines.length > 20000) logView.lines.splice(0, 5000);
    if (!logView.paused) drawLog();
  };
}
async function loadOlder() {
  if (logView.start <= 0) return;
  const end = logView.start - 1;
  logView.start = Math.max(0, logView.start - 65536);
  const older = (await readRange(logView.name, logView.start, end)).split("\n");
  if (logView.start > 0) older.shift();
  const view = $("#log"), height = view.scrollHeight;
  logView.lines = older.concat(logView.lines);
  drawLog();
  view.scrollTop = view.scrollHeight - height;
}
async function setupLogs() {
  const logs = await api("/api/logs");
  const select = $("#log-name");
  select.innerHTML = logs.map((l) => `<option value="${esc(l.name)}">${esc(l.name)} (${bytes(l.size)})</option>`).join("");
  const wanted = new URLSearchParams(location.search).get("name");
  select.value = logs.some((l) => l.name === wanted) ? wanted : (logs.find((l) => l.name === "vllm") || logs[0])?.name;
  select.addEventListener("change", () => openLog(select.value));
  $("#log-filter").addEventListener("input", drawLog);
  $("#log-older").addEventListener("click", loadOlder);
  $("#log-pause").addEventListener("click", (event) => {
    logView.paused = !logView.paused;
    event.target.textContent = logView.paused ? "Follow" : "Pause";
    if (!logView.paused) { drawLog(); $("#log").scrollTop = $("#log").scrollHeight; }
  });
  if (select.value) openLog(select.value);
}

// --- services ------------------------------------------------------------------
async function services() {
  const list = await api("/api/services");
  $("#services").innerHTML = list.map((s) => `<tr data-name="${esc(s.name)}">
    <td>${esc(s.name)}</td><td><span class="badge ${s.state === "RUNNING" ? "ready" : s.state === "STARTING" ? "starting" : ["FATAL", "BACKOFF", "EXITED"].includes(s.state) ? "failed" : ""}">${esc(s.state)}</span></td>
    <td>${duration(s.uptime)}</td>
    <td>${["start", "stop", "restart"].map((a) => `<button type="button" data-action="${a}" ${!s.stoppable && a !== "start" ? "disabled title=\"the portal depends on it\"" : ""}>${a}</button>`).join(" ")}</td></tr>`).join("");
}
function setupServices() {
  $("#services").addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    button.disabled = true;
    try { await api(`/api/services/${button.closest("tr").dataset.name}/${button.dataset.action}`, { method: "POST" }); }
    catch (error) { alert(error.message); }
    services();
  });
}

// --- apps ----------------------------------------------------------------------
function setupApps() {
  document.querySelectorAll("a.app").forEach((a) => { a.href = publicBase(a.dataset.port) + a.dataset.path; });
}

every(5000, health);
({
  overview: () => every(2000, overview),
  models: () => { setupModels(); every(2000, models); },
  logs: setupLogs,
  services: () => { setupServices(); every(3000, services); },
  apps: setupApps,
})[page]?.();
