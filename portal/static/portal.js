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
function secondsText(value) { return value == null ? "–" : value < 1 ? `${(value * 1000).toFixed(0)} ms` : `${value.toFixed(2)} s`; }
async function api(path, options = {}) {
  // Both headers mark the call as the portal's own: a form on another page of this box cannot send them (app/guard.py).
  const response = await fetch(path, { headers: { "Content-Type": "application/json", "X-Portal-Request": "1" }, ...options });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body.detail || body || response.statusText);
  return body;
}
function every(ms, fn) { fn(); return setInterval(fn, ms); }
function bar(fraction) { return `<div class="bar"><span style="width:${Math.min(100, Math.max(0, fraction * 100)).toFixed(1)}%"></span></div>`; }
function publicBase(port, where = location) {
  // The public address of another external port of this box. Behind a proxy that puts the port in the host
  // name (RunPod: https://<pod>-1111.proxy.runpod.net) that is the same name with the other port in it.
  const own = document.body.dataset.portalPort;
  const proxied = own && !where.port && where.hostname.match(new RegExp(`^(.+)-${own}(\\..+)$`));
  return proxied ? `${where.protocol}//${proxied[1]}-${port}${proxied[2]}` : `${where.protocol}//${where.hostname}:${port}`;
}

// --- header: overall health ----------------------------------------------------
function showHealth(instances) {
  const states = instances.map((i) => i.state);
  const level = states.includes("failed") ? "bad" : states.some((s) => s !== "ready") ? "warn" : "ok";
  $("#health").className = `dot ${level}`;
  $("#health-text").textContent = instances.length ? `${states.filter((s) => s === "ready").length}/${instances.length} models ready` : "no model";
}
async function health() {
  try { showHealth(await api("/api/instances")); }
  catch (error) { $("#health").className = "dot bad"; $("#health-text").textContent = "manager unreachable"; }
}

// --- overview ------------------------------------------------------------------
const history = {};
function sparkline(values) {
  const points = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * 100},${34 - (v / 100) * 32}`).join(" ");
  return `<svg class="spark" viewBox="0 0 100 36" preserveAspectRatio="none"><polyline points="${points}"/></svg>`;
}
async function overview() {
  const stats = await api("/api/stats");
  $("#gpus").innerHTML = stats.gpus.length ? stats.gpus.map((g) => {
    (history[g.index] ??= []).push(g.utilization ?? 0);
    if (history[g.index].length > 150) history[g.index].shift();
    return `<div class="card gpu" data-index="${g.index}"><h3><span>GPU ${g.index}</span><span class="muted small">${g.utilization ?? "–"} %</span></h3>
      <p class="muted small gpu-name">${esc(g.name)}</p>
      ${sparkline(history[g.index])}
      <dl class="kv"><dt>Utilization</dt><dd>${g.utilization ?? "–"} %</dd>
      <dt>Memory</dt><dd>${bytes(g.memory_used)} / ${bytes(g.memory_total)}</dd></dl>${bar(g.memory_total ? g.memory_used / g.memory_total : 0)}
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

// --- provisioning (on the overview) --------------------------------------------
async function provisioningPanel() {
  const p = await api("/api/provisioning"), box = $("#provisioning");
  box.hidden = !p.configured;
  if (!p.configured) return;
  const steps = p.steps.map((s) => `<li>${esc(s.name)} <span class="badge ${esc(s.status)}">${esc(s.status)}</span>
    <span class="muted small">${esc(s.detail)}</span>${s.error ? ` <span class="small">— ${esc(s.error)}</span>` : ""}</li>`).join("");
  box.innerHTML = `<div class="card"><h3><span>Provisioning</span><span class="badge ${esc(p.status)}">${esc(p.status)}</span></h3>
    <dl class="kv">${p.script ? `<dt>Script</dt><dd>${esc(p.script)}</dd>` : ""}${p.manifest ? `<dt>Manifest</dt><dd>${esc(p.manifest)}</dd>` : ""}
    <dt>Started</dt><dd>${esc(p.started_at || "–")}</dd><dt>Ended</dt><dd>${esc(p.ended_at || "–")}</dd>
    <dt>Exit code</dt><dd>${p.exit_code ?? "–"}</dd>${p.waiting.length ? `<dt>Waiting</dt><dd>${esc(p.waiting.join(", "))}</dd>` : ""}</dl>
    ${steps ? `<ol class="steps">${steps}</ol>` : ""}
    ${p.progress ? `<pre class="lines">${esc(p.progress)}</pre>` : ""}
    ${p.status === "failed" ? `<p class="small"><strong>Failed:</strong> ${esc(p.error)}</p>` : ""}
    <div class="actions"><a class="button" href="/logs?name=provisioning">Log</a>
      <button type="button" id="provisioning-rerun" ${["pending", "running"].includes(p.status) ? "disabled" : ""}>Run again</button></div></div>`;
  $("#provisioning-rerun").onclick = async (event) => {
    if (!confirm("Run provisioning again now? Engines keep running.")) return;
    event.target.disabled = true;
    try { await api("/api/provisioning/rerun", { method: "POST" }); } catch (error) { alert(error.message); }
    provisioningPanel();
  };
}

// --- models --------------------------------------------------------------------
function snippets(instance) {
  const base = `${publicBase(apiPort)}${instance.id === "vllm" ? "" : `/instances/${instance.id}`}/v1`;
  const name = instance.served_model_name;
  const curl = `# TOKEN: your OPEN_BUTTON_TOKEN\ncurl ${base}/chat/completions \\\n  -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\\n  -d '{"model": ${JSON.stringify(name)}, "messages": [{"role": "user", "content": "Hello"}]}'`;
  const python = `from openai import OpenAI\nTOKEN = "..."  # your OPEN_BUTTON_TOKEN\nclient = OpenAI(base_url="${base}", api_key=TOKEN)\nprint(client.chat.completions.create(model=${JSON.stringify(name)},\n      messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)`;
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
  } else if (i.state === "waiting") {
    detail = `<p class="small">${esc(i.reason)} — <a href="/logs?name=provisioning">provisioning log</a></p>`;
  } else if (i.state === "sleeping" || (i.state === "stopped" && i.reason)) {
    detail = `<p class="small muted">${esc(i.reason || "")}</p>`;
  } else if (i.state === "failed") {
    detail = `<p class="small"><strong>Failed:</strong> ${esc(i.reason)}</p><pre class="lines">${esc(lines.slice(-12).join("\n"))}</pre>`;
  } else if (i.state === "ready" && apiPort) {
    detail = (i.reason ? `<p class="small muted">${esc(i.reason)}</p>` : "") + snippets(i);
  }
  return `<div class="card instance" data-id="${esc(i.id)}">
    <h3><span>${esc(i.id)}</span><span class="badge ${esc(i.state)}">${esc(i.state)}</span></h3>
    <dl class="kv"><dt>Model</dt><dd>${esc(i.model)}</dd><dt>Served as</dt><dd>${esc(i.served_model_name)}</dd>
    <dt>GPUs</dt><dd>${esc(i.gpus ? i.gpus.join(", ") : "automatic")}</dd><dt>Port</dt><dd>${i.port}</dd>
    <dt>Uptime</dt><dd>${duration(i.uptime)}</dd><dt>Restarts</dt><dd>${i.restarts}</dd>${policyRows(i)}</dl>
    ${detail}
    <div class="actions">
      ${["start", "stop", "restart"].map((a) => `<button type="button" data-action="${a}" ${
        (a === "start" && ["ready", "starting"].includes(i.state)) || (a === "stop" && i.state === "stopped") ? "disabled" : ""}>${a[0].toUpperCase() + a.slice(1)}</button>`).join("")}
      <button type="button" data-action="swap">Swap…</button>
      <a class="button" href="/logs?name=${encodeURIComponent(i.id)}">Log</a>
      <button type="button" class="danger" data-action="delete">Delete</button>
    </div></div>`;
}
const known = {};
async function models() {
  const instances = await api("/api/instances");
  instances.forEach((i) => { known[i.id] = i; });
  showHealth(instances);
  const open = [...document.querySelectorAll("#instances details[open]")].map((d) => d.closest(".instance").dataset.id + d.querySelector("summary").textContent);
  $("#instances").innerHTML = instances.length ? instances.map(instanceCard).join("") : `<p class="muted">No model yet: start one below.</p>`;
  document.querySelectorAll("#instances details").forEach((d) => {
    if (open.includes(d.closest(".instance").dataset.id + d.querySelector("summary").textContent)) d.open = true;
  });
  return instances.some((i) => ["starting", "stopping"].includes(i.state));
}
async function pollModels() {  // every 2 s, every second while an engine starts or stops
  let busy = false;
  try { busy = await models(); } catch (error) { /* the header says when the manager is unreachable */ }
  setTimeout(pollModels, busy ? 1000 : 2000);
}
// Arguments are shown as one shell-quoted string and sent back as that string: the server splits it (shlex).
function quoteArgs(args) {
  return (args || []).map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", `'"'"'`)}'`)).join(" ");
}
async function copyText(text) {
  // The Clipboard API exists only in a secure context; on plain http (ENABLE_HTTPS=false without a TLS proxy)
  // fall back to a hidden textarea and execCommand.
  try {
    if (navigator.clipboard && window.isSecureContext) { await navigator.clipboard.writeText(text); return true; }
  } catch (error) { /* denied: try the old way */ }
  const area = Object.assign(document.createElement("textarea"), { value: text, readOnly: true });
  area.style.cssText = "position:fixed;top:0;left:0;opacity:0";
  document.body.append(area);
  area.select();
  let done = false;
  try { done = document.execCommand("copy"); } catch (error) { done = false; }
  area.remove();
  return done;
}
function setupModels() {
  $("#instances").addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.classList.contains("copy")) {
      event.preventDefault();
      button.textContent = (await copyText(button.dataset.code)) ? "Copied" : "Copy failed: select the text";
      button.closest("details").open = true;
      return;
    }
    const id = button.closest(".instance").dataset.id, action = button.dataset.action;
    if (action === "swap") {
      const form = $("#swap"), current = known[id] || {};
      form.id.value = id;
      form.model.value = current.model || "";
      form.args.value = quoteArgs(current.args);
      form.gpus.value = current.gpus ? current.gpus.join(",") : "";
      form.share_gpus.checked = !!current.share_gpus;
      fillPolicy(form, current);
      form.scrollIntoView({ block: "center" });
      form.model.focus();
      form.model.select();
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
    const body = { model: form.model.value.trim(), args: form.args.value,
                   gpus: gpus ? gpus.split(",").map((g) => parseInt(g, 10)) : null, share_gpus: form.share_gpus.checked,
                   ...policyBody(form) };
    result.textContent = "Sending…";
    try {
      await api(`/api/instances/${encodeURIComponent(form.id.value.trim())}`, { method: "PUT", body: JSON.stringify(body) });
      result.textContent = `Accepted: ${form.id.value} is starting ${body.model}. Its progress shows above.`;
      fillPolicy(form, null);  // sent: from now on untouched fields keep what the instance has
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
let drawPending = false;
function scheduleDraw() {  // a busy log redraws once per frame, not once per line
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; if (!logView.paused) drawLog(); });  // Pause holds from the click on
}
async function readRange(name, start, end) {  // bytes start..end (inclusive) of a log, by HTTP Range
  const response = await fetch(`/api/logs/${encodeURIComponent(name)}`, { headers: { Range: `bytes=${start}-${end}` } });
  return response.ok ? new Uint8Array(await response.arrayBuffer()) : new Uint8Array();
}
const decoder = new TextDecoder();
function wholeLines(data, start, cutHead) {
  // [lines, offset of the first whole line, offset just after the last whole line]; a chunk that starts
  // inside a line drops that part (it comes with the older chunk), and a last line without "\n" waits for the stream.
  let head = 0;
  if (cutHead) { const newline = data.indexOf(10); head = newline < 0 ? 0 : newline + 1; }
  const tail = data.lastIndexOf(10) + 1;
  if (tail <= head) return [[], start + head, start + head];
  const lines = decoder.decode(data.subarray(head, tail - 1)).split("\n");
  return [lines, start + head, start + tail];
}
async function openLog(name) {
  logView.source?.close();
  const info = (await api("/api/logs")).find((l) => l.name === name);
  const size = info ? info.size : 0;
  logView.name = name;
  const from = Math.max(0, size - 65536);
  const [lines, first, next] = size ? wholeLines(await readRange(name, from, size - 1), from, from > 0) : [[], 0, 0];
  logView.lines = lines;
  logView.start = first;
  $("#log-download").href = `/api/logs/${encodeURIComponent(name)}/download`;
  $("#log-older").disabled = first <= 0;
  $("#log").scrollTop = 0;
  drawLog();
  $("#log").scrollTop = $("#log").scrollHeight;
  follow(name, next);
}
function follow(name, offset) {
  // Live tail from byte `offset`. Each event's id is the offset after its line: when the stream breaks (the
  // manager restarted), it resumes from there, so no line is lost or shown twice. (EventSource's own retry would
  // ask again for the first offset in the URL.)
  logView.source?.close();
  const source = new EventSource(`/api/logs/${encodeURIComponent(name)}/stream?offset=${offset}`);
  logView.source = source;
  logView.next = offset;
  source.onmessage = (event) => {
    logView.next = Number(event.lastEventId) || logView.next;
    logView.lines.push(event.data);
    if (logView.lines.length > 20000) logView.lines.splice(0, 5000);
    if (!logView.paused) scheduleDraw();
  };
  source.onerror = () => {
    source.close();
    setTimeout(() => { if (logView.source === source) follow(name, logView.next); }, 1000);
  };
}
async function loadOlder() {
  if (logView.start <= 0) return;
  const from = Math.max(0, logView.start - 65536);
  const [older, first] = wholeLines(await readRange(logView.name, from, logView.start - 1), from, from > 0);
  logView.start = first;
  $("#log-older").disabled = first <= 0;
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
    <td>${["start", "stop", "restart"].map((a) => `<button type="button" data-action="${a}" ${
      !s.stoppable && a !== "start" ? "disabled title=\"the portal depends on it\""
      : (a === "start" && ["RUNNING", "STARTING"].includes(s.state)) || (a === "stop" && !["RUNNING", "STARTING", "BACKOFF"].includes(s.state))
        ? "disabled" : ""}>${a}</button>`).join(" ")}</td></tr>`).join("");
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
  $("#apply-config").addEventListener("click", async (event) => {
    event.target.disabled = true;
    try {
      const answer = await api("/api/caddy/reload", { method: "POST" });
      $("#apply-result").textContent = answer.result === "reloaded" ? "Applied: Caddy reloaded." : "Nothing changed.";
    } catch (error) { $("#apply-result").textContent = `Not applied: ${error.message}`; }
    event.target.disabled = false;
  });
}

// --- apps ----------------------------------------------------------------------
function appLink(port, path, where = location) {
  // The auth cookie belongs to the host name, whatever the port: a link to this host opens logged in. A link to
  // another host name (a port-in-the-name proxy) carries ?token=, which Caddy turns into its cookie there.
  const url = new URL(publicBase(port, where) + path);
  if (document.body.dataset.token && url.hostname !== where.hostname) url.searchParams.set("token", document.body.dataset.token);
  return url.href;
}
function setupApps() {
  document.querySelectorAll("a.app").forEach((a) => { a.href = appLink(a.dataset.port, a.dataset.path); });
}

// Each page's start; the scripts of other pages (activity.js, playground.js, ...) add theirs here. They run once
// every script has loaded.
const pages = {
  overview: () => { every(2000, overview); every(2000, provisioningPanel); },
  models: () => { setupModels(); pollModels(); },
  logs: setupLogs,
  services: () => { setupServices(); every(3000, services); },
  apps: setupApps,
};
every(5000, health);
document.addEventListener("DOMContentLoaded", () => pages[page]?.());
