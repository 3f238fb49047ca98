// The Playground: a chat with a ready model, streamed from /api/playground/chat (the manager relays it to the API
// port). Tokens are shown as they arrive, with tokens/s. The conversation lives in this page only. Loaded after
// portal.js.
"use strict";

const conversation = [];
let streaming = null;  // the AbortController of the reply on its way

async function playgroundModels() {
  const instances = await api("/api/instances"), select = $("#chat-model"), chosen = select.value;
  const names = [...new Set(instances.filter((i) => i.state === "ready").map((i) => i.served_model_name))];
  select.innerHTML = names.length ? names.map((n) => `<option value="${esc(n)}">${esc(n)}</option>`).join("")
    : `<option value="">no model ready</option>`;
  if (names.includes(chosen)) select.value = chosen;
}
function addMessage(role, text) {
  const message = Object.assign(document.createElement("div"), { className: `msg ${role}`, textContent: text });
  $("#chat").append(message);
  message.scrollIntoView({ block: "end" });
  return message;
}
function errorText(body) {
  try {
    const parsed = JSON.parse(body);
    const detail = parsed.detail ?? parsed.error?.message ?? parsed.message ?? body;
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  } catch (error) { return body; }
}
function knob(name, parse) {
  const value = $("#knobs")[name].value;
  return value === "" ? undefined : parse(value);
}
function stats(count, started, first, now) {
  const speed = first != null && count > 1 && now > first ? ((count - 1) / ((now - first) / 1000)).toFixed(1) : "–";
  return `${count} tokens · ${speed} tokens/s · first token ${first == null ? "–" : secondsText((first - started) / 1000)}`;
}
function* events(buffer) {  // complete SSE events' data fields; what is left stays in buffer.rest
  let cut;
  while ((cut = buffer.rest.indexOf("\n\n")) >= 0) {
    const event = buffer.rest.slice(0, cut);
    buffer.rest = buffer.rest.slice(cut + 2);
    const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
    if (data && data !== "[DONE]") yield JSON.parse(data);
  }
}
async function send(event) {
  event.preventDefault();
  const input = $("#chat-input"), text = input.value.trim(), model = $("#chat-model").value;
  if (!text || streaming) return;
  if (!model) { $("#chat-stats").textContent = "No model is ready: start one on the Models page."; return; }
  conversation.push({ role: "user", content: text });
  addMessage("user", text);
  input.value = "";
  const reply = addMessage("assistant", "");
  reply.classList.add("streaming");
  const body = { model, messages: conversation, temperature: knob("temperature", Number),
                 max_tokens: knob("max_tokens", (v) => parseInt(v, 10)), top_p: knob("top_p", Number) };
  streaming = new AbortController();
  $("#chat-send").disabled = true;
  $("#chat-stop").disabled = false;
  const started = performance.now();
  let first = null, count = 0, answer = "";
  try {
    const response = await fetch("/api/playground/chat", {
      method: "POST", body: JSON.stringify(body), signal: streaming.signal,
      headers: { "Content-Type": "application/json", "X-Portal-Request": "1" } });
    if (!response.ok) throw new Error(errorText(await response.text()));
    const reader = response.body.getReader(), decoder = new TextDecoder(), buffer = { rest: "" };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer.rest += decoder.decode(value, { stream: true }).replaceAll("\r", "");
      for (const chunk of events(buffer)) {
        if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
        const piece = chunk.choices?.[0]?.delta?.content;
        if (piece) {
          first ??= performance.now();
          count += 1;
          answer += piece;
          reply.textContent = answer;
        }
        if (chunk.usage?.completion_tokens) count = chunk.usage.completion_tokens;
        $("#chat-stats").textContent = stats(count, started, first, performance.now());
      }
    }
    $("#chat-stats").textContent = stats(count, started, first, performance.now());
  } catch (error) {
    if (error.name === "AbortError") $("#chat-stats").textContent = `Stopped. ${stats(count, started, first, performance.now())}`;
    else { reply.classList.add("error"); reply.textContent = answer ? `${answer}\n\n[${error.message}]` : error.message; }
  } finally {
    reply.classList.remove("streaming");
    if (answer) conversation.push({ role: "assistant", content: answer });
    else conversation.pop();  // nothing came: the question is not part of the conversation
    streaming = null;
    $("#chat-send").disabled = false;
    $("#chat-stop").disabled = true;
  }
}

pages.playground = () => {
  every(5000, () => playgroundModels().catch(() => { /* the header says when the manager is unreachable */ }));
  $("#chat-form").addEventListener("submit", send);
  $("#chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#chat-form").requestSubmit();
  });
  $("#chat-stop").addEventListener("click", () => streaming?.abort());
  $("#chat-clear").addEventListener("click", () => {
    streaming?.abort();
    conversation.length = 0;
    $("#chat").innerHTML = "";
    $("#chat-stats").textContent = "";
  });
};
