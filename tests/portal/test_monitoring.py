"""The portal's monitoring pages in a real browser (Debian's chromium via playwright), through Caddy with TLS and
auth: the overview's model cards and charts, the playground's streamed reply, the activity table and its filters,
the Models page's routing policy, and each new page at a phone's width.

The stand-in engine streams a token every 50 ms here, so a reply takes long enough to be seen growing.
"""
from __future__ import annotations

import json
import re
import threading
import time

import pytest

from tests.appliance import REPO, Appliance
from tests.portal.test_pages import ARGS, CHROMIUM, DOC_SHOTS, login, shot, wait_ready

playwright = pytest.importorskip("playwright.sync_api")
DOC_SHOTS.update({"overview-models", "playground", "activity", "models-policy", "playground-phone"})
MODEL = "acme/tiny-chat"
ACTIVITY = [  # what the router's GET /activity answers (app/router_client.py), newest first
    {"time": 1767225600.5, "model": MODEL, "instance": "vllm", "path": "/v1/chat/completions", "status": 200,
     "duration": 0.842, "ttft": 0.051, "prompt_tokens": 12, "completion_tokens": 16},
    {"time": 1767225590.0, "model": "acme/coder", "instance": "coder", "path": "/v1/completions", "status": 503,
     "duration": 30.0, "ttft": None, "prompt_tokens": None, "completion_tokens": None},
    {"time": 1767225580.2, "model": MODEL, "instance": "vllm", "path": "/v1/chat/completions", "status": None,
     "duration": 2.5, "ttft": 0.049, "prompt_tokens": 40, "completion_tokens": None},
]


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    app = Appliance(tmp_path_factory.mktemp("monitoring"), {
        "VLLM_MODEL": MODEL, "FAKE_VLLM_TOKEN_DELAY": "0.05",
        "FAKE_NVML_GPUS": "1", "PYTHONPATH": str(REPO / "tests/fakes/nvml_site")})
    app.start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
            context.set_default_timeout(10_000)
            yield app, context
            browser.close()
    finally:
        app.stop()


@pytest.fixture(scope="module")
def api(portal):
    app, _ = portal
    with app.client(timeout=30) as client:
        yield client


def chat_load(app, stop: threading.Event) -> None:
    """Chat requests one after another through Caddy on the API port until `stop`."""
    with app.client(timeout=30) as client:
        while not stop.is_set():
            client.post(app.api_url("/v1/chat/completions"), json={
                "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "count to eight please"}]})


def test_overview_shows_each_model_with_figures_and_live_charts(portal, api):
    app, context = portal
    wait_ready(app, api)
    stop = threading.Event()
    load = threading.Thread(target=chat_load, args=(app, stop), daemon=True)
    load.start()
    try:
        page = login(app, context)
        card = "#model-cards .card.model[data-id=vllm]"
        page.wait_for_selector(f"{card} .badge.ready")
        assert MODEL in page.inner_text(f"{card} .served")
        # rates need two readings 2 s apart; the TTFT p50 the histogram's increase over the last minute
        page.wait_for_function(f"() => parseFloat(document.querySelector('{card} .generation-tps').textContent) > 0",
                               timeout=15_000)
        page.wait_for_function(f"() => document.querySelector('{card} .ttft').textContent.includes('ms')",
                               timeout=15_000)
        page.wait_for_function("() => modelCards.vllm.charts[0].data[0].length >= 3", timeout=15_000)
    finally:
        stop.set()
        load.join(10)
    figures = page.inner_text(f"{card} .figures")
    for label in ("Prompt", "Generation", "tokens/s", "Running / waiting", "KV cache", "First token p50"):
        assert label in figures
    assert float(page.inner_text(f"{card} .prompt-tps").split()[0]) > 0
    assert page.inner_text(f"{card} .ttft") == "50 ms"  # the stand-in's first token: one token delay
    assert page.locator(f"{card} .uplot canvas").count() == 2  # tokens/s and requests
    assert page.evaluate("modelCards.vllm.charts[0].data[2].some((v) => v > 0)")  # generation tokens/s plotted
    # the GPU and host cards are still there beside them
    page.wait_for_selector("#gpus .gpu")
    page.wait_for_selector("#host .card")
    shot(page, "overview-models")
    # the JSON the page reads: bounded history columns of equal length
    answer = api.get(app.portal_url("/api/overview/models")).json()
    history = answer["models"][0]["history"]
    assert answer["window"] == 600 and len({len(column) for column in history.values()}) == 1
    # the page asks for the points after its last answer only, and keeps the rest itself
    with page.expect_request(lambda r: "/api/overview/models?since=" in r.url, timeout=5000):
        pass
    newer = api.get(app.portal_url(f"/api/overview/models?since={answer['time']}")).json()
    assert all(t > answer["time"] for t in newer["models"][0]["history"]["t"])
    assert len(newer["models"][0]["history"]["t"]) < len(history["t"])


def test_a_stopped_model_shows_its_state_and_no_figures(portal, api):
    app, context = portal
    page = login(app, context)
    card = "#model-cards .card.model[data-id=vllm]"
    page.wait_for_selector(f"{card} .badge.ready")
    assert api.post(app.portal_url("/api/instances/vllm/stop")).status_code == 200
    page.wait_for_selector(f"{card} .badge.stopped", timeout=8000)
    assert page.inner_text(f"{card} .generation-tps").startswith("–")
    assert api.post(app.portal_url("/api/instances/vllm/start")).status_code == 200
    page.wait_for_selector(f"{card} .badge.ready", timeout=15_000)


def test_playground_streams_a_reply_token_by_token(portal, api):
    app, context = portal
    wait_ready(app, api)
    page = login(app, context, "/playground")
    page.wait_for_function(f"() => document.querySelector('#chat-model').value === '{MODEL}'")
    # every text the reply shows, as the page renders it
    page.evaluate("""() => { window.renders = [];
        new MutationObserver(() => { const r = document.querySelector('#chat .msg.assistant:last-child');
          if (r && r.textContent !== window.renders.at(-1)) window.renders.push(r.textContent); })
        .observe(document.querySelector('#chat'), { childList: true, subtree: true, characterData: true }); }""")
    page.fill("#knobs input[name=max_tokens]", "12")
    page.fill("#chat-input", "Tell me about the weather on the moon today")
    page.click("#chat-send")
    page.wait_for_selector("#chat .msg.assistant:not(.streaming)", timeout=15_000)
    final = page.inner_text("#chat .msg.assistant")
    assert final.startswith(f"stand-in reply from {MODEL}:")
    renders = [r for r in page.evaluate("window.renders") if r]
    partials = [r for r in renders if r != final]
    assert len(set(partials)) >= 2, renders  # it grew token by token before the final text
    assert all(final.startswith(p) for p in partials)
    assert renders[-1] == final
    stats = page.inner_text("#chat-stats")
    assert stats.startswith("12 tokens") and "tokens/s" in stats and "–" not in stats, stats
    shot(page, "playground")
    # the conversation goes on: the second request carries the first exchange
    with page.expect_request("**/api/playground/chat") as sent:
        page.fill("#chat-input", "and tomorrow")
        page.click("#chat-send")
    messages = json.loads(sent.value.post_data)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"] and messages[1]["content"] == final
    page.wait_for_function("() => document.querySelectorAll('#chat .msg.assistant:not(.streaming)').length === 2",
                           timeout=15_000)


def test_playground_shows_an_unknown_model_error(portal, api):
    app, context = portal
    wait_ready(app, api)
    page = login(app, context, "/playground")
    page.wait_for_function(f"() => document.querySelector('#chat-model').value === '{MODEL}'")
    page.evaluate("() => { const s = document.querySelector('#chat-model');"
                  " s.add(new Option('nope/none', 'nope/none')); s.value = 'nope/none'; }")
    page.fill("#chat-input", "hello")
    page.click("#chat-send")
    page.wait_for_selector("#chat .msg.assistant.error")
    assert "does not exist" in page.inner_text("#chat .msg.assistant.error")


def test_activity_page_renders_the_routers_requests_and_filters_them(portal, api):
    app, context = portal
    # a real request through Caddy and the router shows up, with its model, status and usage
    answer = api.post(app.api_url("/v1/completions"), json={"model": MODEL, "prompt": "activity", "max_tokens": 3})
    assert answer.status_code == 200, answer.text
    page = login(app, context, "/activity")
    page.wait_for_selector("#activity tr.request")
    rows = page.locator("#activity tr.request").all_inner_texts()
    assert any(MODEL in row and "200" in row for row in rows), rows
    assert page.locator("#activity-note").is_hidden()
    asked = []

    def router_answer(route):  # the manager's answer with the router's list in it, filtered as the manager does
        query = route.request.url.split("?", 1)[1]
        asked.append(query)
        rows = [r for r in ACTIVITY if "model=acme%2Fcoder" not in query or r["model"] == "acme/coder"]
        rows = [r for r in rows if "status=error" not in query or r["status"] is None or r["status"] >= 400]
        route.fulfill(status=200, content_type="application/json", body=json.dumps(
            {"requests": rows, "models": sorted({r["model"] for r in ACTIVITY}), "note": None}))
    page.route("**/api/router/activity?*", router_answer)
    page.wait_for_function("() => document.querySelectorAll('#activity tr.request').length === 3")
    assert page.locator("#activity-note").is_hidden()
    first = page.inner_text("#activity tr.request >> nth=0")
    for text in (MODEL, "200", "842 ms", "51 ms", "12 / 16"):
        assert text in first
    assert "503" in page.inner_text("#activity tr.request >> nth=1")
    assert "cut" in page.inner_text("#activity tr.request >> nth=2").lower()  # the client left first
    shot(page, "activity")
    page.select_option("#activity-model", "acme/coder")
    page.wait_for_function("() => document.querySelectorAll('#activity tr.request').length === 1")
    assert "acme/coder" in page.inner_text("#activity tr.request")
    assert any("model=acme%2Fcoder" in q for q in asked)
    page.select_option("#activity-model", "")
    page.select_option("#activity-status", "error")
    page.wait_for_function("() => document.querySelectorAll('#activity tr.request').length === 2")


def test_models_page_edits_the_routing_policy(portal, api):
    app, context = portal
    wait_ready(app, api)
    page = login(app, context, "/models")
    card = ".instance[data-id=vllm]"
    page.wait_for_selector(card)
    assert re.fullmatch(r"\d+ / \d+", page.inner_text(f"{card} .router-load"))  # in flight / queued, from the router
    assert "starts on demand" in page.inner_text(f"{card} .policy")
    page.click(f"{card} button[data-action=swap]")
    assert page.input_value("#swap input[name=max_queue]") == "100"  # the instance's current policy
    page.fill("#swap input[name=aliases]", "chat, assistant")
    page.fill("#swap input[name=idle_timeout]", "300")
    page.fill("#swap input[name=max_queue]", "5")
    page.fill("#swap input[name=queue_timeout]", "30")
    page.uncheck("#swap input[name=on_demand]")
    page.check("#swap input[name=pinned]")
    shot(page, "models-policy")
    page.click("#swap button[type=submit]")
    page.wait_for_function("() => document.querySelector('#swap-result').textContent.startsWith('Accepted')")
    deadline, instance = time.monotonic() + 20, {}
    while time.monotonic() < deadline:
        instance = api.get(app.portal_url("/api/instances/vllm")).json()
        if instance["aliases"] == ["chat", "assistant"]:
            break
        time.sleep(0.2)
    assert {k: instance[k] for k in ("aliases", "on_demand", "idle_timeout", "max_queue", "queue_timeout",
                                     "pinned")} == {"aliases": ["chat", "assistant"], "on_demand": False,
                                                    "idle_timeout": 300, "max_queue": 5, "queue_timeout": 30,
                                                    "pinned": True}
    page.wait_for_function(f"() => document.querySelector('{card} .aliases').textContent === 'chat, assistant'")
    assert "by hand only" in page.inner_text(f"{card} .policy") and "pinned" in page.inner_text(f"{card} .policy")
    # a field left untouched is not sent: the instance keeps it
    wait_ready(app, api)
    page.click(f"{card} button[data-action=swap]")
    page.fill("#swap input[name=max_queue]", "7")
    with page.expect_request("**/api/instances/vllm") as sent:
        page.click("#swap button[type=submit]")
    body = json.loads(sent.value.post_data)
    assert body["max_queue"] == 7 and not {"aliases", "on_demand", "pinned", "idle_timeout"} & set(body)
    page.wait_for_function(f"() => document.querySelector('{card} .queue').textContent.startsWith('up to 7 requests')",
                           timeout=20_000)
    assert api.get(app.portal_url("/api/instances/vllm")).json()["aliases"] == ["chat", "assistant"]
    # back to the defaults for the other tests
    assert api.put(app.portal_url("/api/instances/vllm"), json={
        "model": MODEL, "aliases": [], "on_demand": True, "idle_timeout": 0, "max_queue": 100, "queue_timeout": 600,
        "pinned": False}).status_code == 202
    wait_ready(app, api)


def test_the_new_pages_fit_a_phone(portal, api):
    app, context = portal
    wait_ready(app, api)
    phone = context.browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 800},
                                        is_mobile=True, has_touch=True)
    page = phone.new_page()
    page.goto(app.portal_url(f"/?token={app.token}"))
    page.route("**/api/router/activity?*", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"requests": ACTIVITY, "models": [MODEL, "acme/coder"], "note": None})))
    for path, ready in (("/", "#model-cards .uplot"), ("/activity", "#activity tr.request"),
                        ("/playground", "#chat-form"), ("/models", "#policy")):
        page.goto(app.portal_url(path))
        page.wait_for_selector(ready)
        if path == "/playground":
            page.wait_for_function(f"() => document.querySelector('#chat-model').value === '{MODEL}'")
            page.fill("#chat-input", "a reply that wraps on a narrow screen, please")
            page.click("#chat-send")
            page.wait_for_selector("#chat .msg.assistant:not(.streaming)", timeout=15_000)
            shot(page, "playground-phone")
        # against the device width: with is_mobile the layout viewport grows to fit content that is too wide
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
        for link in ("Activity", "Playground"):
            assert page.locator(f"nav a:has-text('{link}')").is_visible()
    phone.close()
