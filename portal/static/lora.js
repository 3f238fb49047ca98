// The Models page's LoRA section (portal/templates/_lora.html): each LoRA instance's adapters, load and unload.
"use strict";
(() => {
  const list = document.querySelector("#lora-list"), form = document.querySelector("#lora-load");
  if (!list || !form) return;
  const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  async function call(path, options = {}) {
    // Both headers mark the call as the portal's own (app/guard.py).
    const response = await fetch(path, { headers: { "Content-Type": "application/json", "X-Portal-Request": "1" }, ...options });
    const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
    if (!response.ok) throw new Error(body.detail || body || response.statusText);
    return body;
  }
  const enabled = (i) => i.lora !== null && i.lora !== undefined || (i.args || []).some((a) => a === "--enable-lora" || a.startsWith("--enable-lora="));
  function table(i, adapters) {
    const rows = adapters.map((a) => `<tr data-name="${esc(a.name)}"><td><code>${esc(a.name)}</code></td><td class="small">${esc(a.path)}</td>
      <td>${a.static ? "static" : "runtime"}${a.loaded ? "" : ' <span class="muted">(not loaded)</span>'}</td>
      <td>${a.loaded && i.state === "ready" ? `<button type="button" data-unload="${esc(a.name)}">Unload</button>` : ""}</td></tr>`).join("");
    return `<div class="card lora" data-id="${esc(i.id)}"><h3><span>${esc(i.id)} <span class="small muted">${esc(i.served_model_name)}</span></span>
      <span class="badge ${esc(i.state)}">${esc(i.state)}</span></h3>
      ${adapters.length ? `<table class="table"><thead><tr><th>Name</th><th>Path</th><th>Kind</th><th></th></tr></thead><tbody>${rows}</tbody></table>`
                        : '<p class="small muted">No adapter loaded.</p>'}</div>`;
  }
  async function refresh() {
    try {
      const instances = (await call("/api/instances")).filter(enabled);
      const lists = await Promise.all(instances.map((i) => call(`/api/instances/${encodeURIComponent(i.id)}/lora`).catch(() => ({ adapters: [] }))));
      list.innerHTML = instances.length ? instances.map((i, n) => table(i, lists[n].adapters)).join("")
        : '<p class="muted">No instance has LoRA on: start one with <code>lora</code> set (the API, or the client\'s <code>serve(..., lora=...)</code>).</p>';
      const select = form.instance, chosen = select.value, ready = instances.filter((i) => i.state === "ready");
      select.innerHTML = ready.map((i) => `<option value="${esc(i.id)}">${esc(i.id)}</option>`).join("");
      if (ready.some((i) => i.id === chosen)) select.value = chosen;
    } catch (error) { /* the header says when the manager is unreachable */ }
  }
  list.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-unload]");
    if (!button) return;
    const id = button.closest(".lora").dataset.id, name = button.dataset.unload;
    button.disabled = true;
    try { await call(`/api/instances/${encodeURIComponent(id)}/lora/${encodeURIComponent(name)}`, { method: "DELETE" }); }
    catch (error) { alert(error.message); }
    refresh();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = document.querySelector("#lora-result"), id = form.instance.value;
    const body = { name: form.name.value.trim(), path: form.path.value.trim() };
    result.textContent = "Loading…";
    try {
      await call(`/api/instances/${encodeURIComponent(id)}/lora`, { method: "POST", body: JSON.stringify(body) });
      result.textContent = `Loaded ${body.name} into ${id}: ask for model "${body.name}".`;
    } catch (error) { result.textContent = `Refused: ${error.message}`; }
    refresh();
  });
  refresh();
  setInterval(refresh, 3000);
})();
