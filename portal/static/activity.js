// The Activity page: the router's last requests (/api/router/activity), filtered by model and status. Loaded after
// portal.js; refreshes every 3 s.
"use strict";

function statusBadge(status) {
  const level = status == null ? "failed" : status < 300 ? "ready" : status < 500 ? "starting" : "failed";
  return `<span class="badge ${level}">${status == null ? "cut" : esc(status)}</span>`;
}
function tokens(r) {
  return r.prompt_tokens == null && r.completion_tokens == null ? "–" : `${r.prompt_tokens ?? "–"} / ${r.completion_tokens ?? "–"}`;
}
function activityRow(r) {
  const when = r.time ? new Date(r.time * 1000) : null;
  return `<tr class="request"><td title="${when ? esc(when.toISOString()) : ""}">${when ? esc(when.toLocaleTimeString()) : "–"}</td>
    <td class="model">${esc(r.model || "–")}${r.instance && r.instance !== r.model ? ` <span class="muted small">${esc(r.instance)}</span>` : ""}</td>
    <td>${statusBadge(r.status)}</td><td>${secondsText(r.duration)}</td><td>${secondsText(r.ttft)}</td><td>${tokens(r)}</td></tr>`;
}
async function activity() {
  const model = $("#activity-model"), status = $("#activity-status").value, limit = $("#activity-limit").value;
  const query = new URLSearchParams({ limit });
  if (model.value) query.set("model", model.value);
  if (status) query.set("status", status);
  const answer = await api(`/api/router/activity?${query}`);
  const chosen = model.value;
  model.innerHTML = `<option value="">every model</option>` +
    [...new Set([...answer.models, chosen].filter(Boolean))].map((m) => `<option value="${esc(m)}">${esc(m)}</option>`).join("");
  model.value = chosen;
  $("#activity-note").hidden = !answer.note;
  $("#activity-note").textContent = answer.note || "";
  $("#activity").innerHTML = answer.requests.length ? answer.requests.map(activityRow).join("")
    : `<tr><td colspan="6" class="muted">No request${model.value || status ? " matches" : " yet"}.</td></tr>`;
}

pages.activity = () => {
  const refresh = () => activity().catch((error) => { $("#activity-note").hidden = false; $("#activity-note").textContent = error.message; });
  document.querySelectorAll("#activity-filters select").forEach((s) => s.addEventListener("change", refresh));
  every(3000, refresh);
};
