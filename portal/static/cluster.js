// The Cluster page (/api/cluster) and a worker's page (its GPUs from /api/stats); refreshed every 3 s.
"use strict";

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function row(...texts) {
  const tr = document.createElement("tr");
  for (const text of texts) tr.append(cell(text));
  return tr;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { "X-Portal-Request": "1" } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function showCluster() {
  const data = await getJSON("/api/cluster");
  const error = document.getElementById("cluster-error");
  error.hidden = !data.error;
  error.textContent = data.error ? `Ray: ${data.error}` : "";
  const alive = data.nodes.filter((n) => n.alive).length;
  document.getElementById("cluster-summary").textContent =
    `Role ${data.role}, ${data.mode} mode` + (data.node_ip ? `, cluster traffic on ${data.node_ip}` : "") +
    `: ${alive} of ${data.nodes.length} nodes alive, ${data.gpus} GPUs in the cluster, ${data.local_gpus} on this box.`;
  const nodes = document.querySelector("#cluster-nodes tbody");
  nodes.replaceChildren(...data.nodes.map((n) =>
    row(n.ip, n.head ? "head" : "worker", n.alive ? "alive" : "dead", n.cpus, n.gpus)));
  const engines = document.querySelector("#cluster-engines tbody");
  engines.replaceChildren(...data.engines.map((e) => {
    const where = e.spans_cluster ? `${e.nodes} node(s), ${e.executor} executor` : "this box";
    const tr = row(e.id, where, e.gpus, e.note || "");
    const state = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = `badge ${e.state}`;
    badge.textContent = e.state;
    state.append(badge);
    tr.append(state);
    return tr;
  }));
}

async function showWorkerGpus() {
  const stats = await getJSON("/api/stats");
  const body = document.querySelector("#worker-gpus tbody");
  const gpus = stats.gpus || [];
  body.replaceChildren(...(gpus.length ? gpus.map((g) =>
    row(g.index, g.name, g.memory_total ? `${Math.round(g.memory_used / 2 ** 20)} / ${Math.round(g.memory_total / 2 ** 20)} MiB` : "",
        g.utilization == null ? "" : `${g.utilization} %`))
    : [row(stats.gpu_reason || "no GPU")]));
}

async function refresh() {
  try {
    if (document.getElementById("cluster-nodes")) await showCluster();
    if (document.getElementById("worker-gpus")) await showWorkerGpus();
  } catch (exc) {
    console.warn(exc);
  }
}

refresh();
setInterval(refresh, 3000);
