// The Models page's routing policy: shown on each instance card, edited in the swap form. A field left untouched
// is not sent, so the instance keeps its value (InstanceRequest: null = keep). Loaded after portal.js.
"use strict";

const POLICY_NUMBERS = ["idle_timeout", "max_queue", "queue_timeout"];
const POLICY_CHECKS = ["on_demand", "pinned"];

function dash(value) { return value == null || value === "" ? "–" : esc(value); }
function policyRows(i) {
  // in_flight and queued come from the router (a dash when it has not said); the policy from the saved instance
  const rows = [`<dt>In flight / queued</dt><dd class="router-load">${dash(i.in_flight)} / ${dash(i.queued)}</dd>`];
  if (i.on_demand === undefined) return rows.join("");
  const start = i.on_demand ? "on demand" : "by hand only";
  const idle = i.idle_timeout ? `stops after ${duration(i.idle_timeout)} idle` : "never stopped when idle";
  rows.unshift(`<dt>Aliases</dt><dd class="aliases">${i.aliases?.length ? esc(i.aliases.join(", ")) : "–"}</dd>`,
    `<dt>Policy</dt><dd class="policy">starts ${start}, ${idle}${i.pinned ? ", pinned" : ""}</dd>`,
    `<dt>Queue</dt><dd class="queue">up to ${esc(i.max_queue)} requests, each waiting ${duration(i.queue_timeout)} at most</dd>`);
  return rows.join("");
}
function fillPolicy(form, current) {
  // Show the instance's policy (Swap…); either way, every field counts as untouched again.
  if (current && current.on_demand !== undefined) {
    form.aliases.value = (current.aliases || []).join(", ");
    POLICY_NUMBERS.forEach((name) => { form[name].value = current[name] ?? ""; });
    POLICY_CHECKS.forEach((name) => { form[name].checked = !!current[name]; });
  }
  document.querySelectorAll("#policy input").forEach((input) => { delete input.dataset.touched; });
}
function policyBody(form) {
  const body = {}, touched = (name) => form[name].dataset.touched === "1";
  if (touched("aliases")) body.aliases = form.aliases.value.split(",").map((a) => a.trim()).filter(Boolean);
  POLICY_NUMBERS.filter(touched).forEach((name) => { if (form[name].value !== "") body[name] = Number(form[name].value); });
  POLICY_CHECKS.filter(touched).forEach((name) => { body[name] = form[name].checked; });
  return body;
}
function setupPolicy() {
  $("#policy").addEventListener("input", (event) => { event.target.dataset.touched = "1"; });
  $("#policy").addEventListener("change", (event) => { event.target.dataset.touched = "1"; });
}

const startModels = pages.models;
pages.models = () => { setupPolicy(); startModels(); };
