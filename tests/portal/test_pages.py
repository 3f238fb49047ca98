"""The portal in a real browser (Debian's chromium, driven by playwright), through Caddy with TLS and auth.

The appliance runs the stand-in engine and a fake NVML with two GPUs (tests/fakes/nvml_site), so the overview
shows GPU cards whose owner and memory follow the engines. Screenshots go to tests/artifacts/; with
UPDATE_DOC_SCREENSHOTS=1 the ones docs/portal.md shows are copied to docs/img/ as well.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.appliance import REPO, Appliance

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
DOC_IMAGES = REPO / "docs" / "img"
DOC_SHOTS = {"overview", "overview-no-gpu", "models", "models-starting", "models-failed", "logs", "logs-colours",
             "services", "apps", "overview-phone", "models-phone"}
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-quic", "--no-first-run"]


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium); `make test` installs it")
    app = Appliance(tmp_path_factory.mktemp("portal"), {
        "VLLM_MODEL": "acme/tiny-chat", "FAKE_VLLM_LOG_EVERY": "0.5",
        "FAKE_NVML_GPUS": "2", "PYTHONPATH": str(REPO / "tests/fakes/nvml_site")})
    app.start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
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


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.mouse.move(0, 0)  # no hover or focus effects in the picture
    page.evaluate("document.activeElement?.blur()")
    page.screenshot(path=str(path), full_page=False)
    if os.environ.get("UPDATE_DOC_SCREENSHOTS") and name in DOC_SHOTS:
        shutil.copyfile(path, DOC_IMAGES / path.name)


def login(app, context, path: str = "/"):
    page = context.new_page()
    page.goto(app.portal_url(f"{path}{'&' if '?' in path else '?'}token={app.token}"))
    assert "token=" not in page.url  # the token left the address bar, the cookie stays
    return page


def wait_ready(app, api, instance: str = "vllm", timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = api.get(app.portal_url(f"/api/instances/{instance}"))
        if found.status_code == 200 and found.json()["state"] == "ready":
            return found.json()
        time.sleep(0.2)
    raise AssertionError(f"{instance} not ready: {found.text}")


def test_login_with_token_and_overview_shows_gpus_and_host(portal):
    app, context = portal
    page = login(app, context)
    page.wait_for_selector("#host .card")
    page.wait_for_function("() => document.querySelectorAll('#gpus .gpu').length === 2")
    page.wait_for_function("() => document.querySelector('.gpu[data-index=\"0\"]').textContent.includes('vllm')")
    card = page.inner_text(".gpu[data-index='0']")
    for text in ("GPU 0", "NVIDIA H100", "Utilization", "Memory", "/ 80.0 GiB", "°C", "W", "Used by", "vllm"):
        assert text in card
    assert page.locator(".gpu .bar > span").count() == 2  # memory bars
    for heading in ("CPU", "Memory", "Workspace disk"):
        assert heading in page.inner_text("#host")
    # the sparkline grows with each 2 s sample, without a reload
    page.wait_for_function("() => document.querySelector('.gpu polyline')"
                           ".getAttribute('points').split(' ').length >= 3",
                           timeout=8000)
    page.wait_for_function("() => document.querySelector('#health').classList.contains('ok')")
    assert "1/1 models ready" in page.inner_text("#health-text")
    shot(page, "overview")


def test_overview_stats_follow_the_engines_without_reload(portal, api):
    app, context = portal
    page = login(app, context)
    page.wait_for_function("() => document.querySelector('.gpu[data-index=\"1\"]')?.textContent.includes('vllm')")
    page.evaluate("window.notReloaded = true")
    memory = page.inner_text(".gpu[data-index='1'] dl.kv")
    assert api.post(app.portal_url("/api/instances/vllm/stop")).status_code == 200
    # the engine's GPU memory is released: owner gone, memory lower (fake NVML: 1 GiB per engine process)
    page.wait_for_function("() => !document.querySelector('.gpu[data-index=\"1\"]').textContent.includes('vllm')",
                           timeout=6000)
    assert page.inner_text(".gpu[data-index='1'] dl.kv") != memory
    assert api.post(app.portal_url("/api/instances/vllm/start")).status_code == 200
    page.wait_for_function("() => document.querySelector('.gpu[data-index=\"1\"]').textContent.includes('vllm')",
                           timeout=8000)
    assert page.evaluate("window.notReloaded === true")
    wait_ready(app, api)


def test_overview_without_gpu_shows_a_plain_message(portal):
    app, context = portal
    page = context.new_page()

    def no_nvml(route):  # the real answer, as a box without NVIDIA GPUs gives it
        stats = route.fetch().json()
        stats.update(gpus=[], gpu_reason="NVML is not available: NVML Shared Library Not Found")
        route.fulfill(status=200, content_type="application/json", body=json.dumps(stats))
    page.route("**/api/stats", no_nvml)
    page.goto(app.portal_url("/"))
    page.wait_for_selector("#host .card")
    text = page.inner_text("#gpus")
    assert "No GPU" in text and "NVML Shared Library Not Found" in text
    assert page.locator(".gpu").count() == 0
    shot(page, "overview-no-gpu")


def test_without_the_cookie_the_portal_asks_for_credentials(portal):
    app, context = portal
    other = context.browser.new_context(ignore_https_errors=True)
    with pytest.raises(playwright.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):  # headless: the login dialog is refused
        other.new_page().goto(app.portal_url("/"))
    other.close()


def test_models_page_swaps_a_model_to_ready_and_shows_snippets(portal):
    app, context = portal
    page = login(app, context, "/models")
    page.wait_for_selector(".instance[data-id=vllm] .badge.ready")
    page.click(".instance[data-id=vllm] button[data-action=swap]")  # fills the form with the current choice
    assert page.input_value("#swap input[name=model]") == "acme/tiny-chat"
    assert page.input_value("#swap input[name=id]") == "vllm"
    page.fill("#swap input[name=model]", "acme/swapped-in-browser")
    page.fill("#swap input[name=args]", """--seed 5 --override-generation-config='{"temperature": 0.5}'""")
    page.fill("#swap input[name=gpus]", "0")
    page.click("#swap button[type=submit]")
    page.wait_for_function("() => document.querySelector('#swap-result').textContent.startsWith('Accepted')")
    page.wait_for_function("""() => (() => { const c = document.querySelector('.instance[data-id=vllm]');
        return c && c.textContent.includes('acme/swapped-in-browser') && c.querySelector('.badge.ready'); })()""",
                           timeout=20000)
    card = page.inner_text(".instance[data-id=vllm]")
    assert re.search(r"GPUs\s+0\b", card) and "Restarts" in card and "Uptime" in card
    with app.client() as client:  # the server split the string like a shell: the JSON is one argument
        args = client.get(app.portal_url("/api/instances/vllm")).json()["args"]
    assert args == ["--seed", "5", '--override-generation-config={"temperature": 0.5}']
    page.click(".instance[data-id=vllm] details summary")
    snippet = page.inner_text(".instance pre.snippet")
    assert f"https://127.0.0.1:{app.api_port}/v1/chat/completions" in snippet and "acme/swapped-in-browser" in snippet
    python = page.get_attribute(".instance[data-id=vllm] details:nth-of-type(2) button.copy", "data-code")
    assert f'base_url="https://127.0.0.1:{app.api_port}/v1"' in python and "from openai import OpenAI" in python
    # the copied curl snippet works as given, with TOKEN set (and the appliance's own certificate trusted)
    curl = page.get_attribute(".instance[data-id=vllm] details:nth-of-type(1) button.copy", "data-code")
    done = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "TOKEN": app.token, "CURL_CA_BUNDLE": str(app.cert)})
    assert done.returncode == 0 and "stand-in reply from acme/swapped-in-browser" in done.stdout, done
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "models")


def test_a_starting_engine_shows_elapsed_time_latest_line_and_download_progress(portal, api):
    app, context = portal
    page = login(app, context, "/models")
    page.wait_for_selector(".instance")
    page.fill("#swap input[name=id]", "slow")
    page.fill("#swap input[name=model]", "acme/slow-start")  # the stand-in takes 3 s and prints tqdm lines
    page.fill("#swap input[name=gpus]", "1")
    page.click("#swap button[type=submit]")
    card = ".instance[data-id=slow]"
    page.wait_for_selector(f"{card} .badge.starting")
    page.wait_for_function(f"() => document.querySelector('{card}')?.textContent.includes('Download / load:')",
                           timeout=5000)
    text = page.inner_text(card)
    assert "Starting for" in text and re.search(r"\d+%\|", text)
    assert page.locator(f"{card} pre.lines").count() == 1  # the latest log line
    page.eval_on_selector(card, "e => e.scrollIntoView({block: 'center'})")
    shot(page, "models-starting")
    page.wait_for_selector(f"{card} .badge.ready", timeout=15000)
    page.on("dialog", lambda dialog: dialog.accept())
    page.click(f"{card} button[data-action=delete]")
    page.wait_for_function(f"() => !document.querySelector('{card}')")


def test_a_failed_swap_shows_the_reason(portal):
    app, context = portal
    page = login(app, context, "/models")
    page.wait_for_selector(".instance")
    page.fill("#swap input[name=id]", "broken")
    page.fill("#swap input[name=model]", "acme/fail-load")
    page.fill("#swap input[name=gpus]", "1")
    page.click("#swap button[type=submit]")
    page.wait_for_selector(".instance[data-id=broken] .badge.failed", timeout=20000)
    text = page.inner_text(".instance[data-id=broken]")
    assert "Failed:" in text and "RuntimeError: failed to load acme/fail-load" in text
    page.wait_for_function("() => document.querySelector('#health').classList.contains('bad')", timeout=8000)
    page.locator(".instance[data-id=broken]").scroll_into_view_if_needed()
    shot(page, "models-failed")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click(".instance[data-id=broken] button[data-action=delete]")
    page.wait_for_function("() => !document.querySelector('.instance[data-id=broken]')", timeout=10000)


LOG_TEXT = "document.querySelector('#log').textContent"


def test_logs_page_tails_live_pauses_and_filters(portal):
    app, context = portal
    page = login(app, context, "/logs")
    names = page.eval_on_selector_all("#log-name option", "options => options.map(o => o.value)")
    assert {"vllm", "caddy", "manager"} <= set(names)
    assert page.input_value("#log-name") == "vllm"
    page.wait_for_function(f"() => {LOG_TEXT}.includes('Avg prompt throughput')")
    count = page.evaluate(f"{LOG_TEXT}.split('Avg prompt throughput').length")
    page.wait_for_function(f"() => {LOG_TEXT}.split('Avg prompt throughput').length > {count}",
                           timeout=2000)  # a new line within 2 s
    # the view follows the end
    assert page.evaluate("(v => v.scrollTop + v.clientHeight >= v.scrollHeight - 30)(document.querySelector('#log'))")
    page.click("#log-pause")
    assert page.inner_text("#log-pause") == "Follow"
    paused = page.evaluate(f"{LOG_TEXT}.length")
    page.wait_for_timeout(1200)  # lines keep arriving (every 0.5 s) but the view holds still
    assert page.evaluate(f"{LOG_TEXT}.length") == paused
    page.click("#log-pause")
    page.wait_for_function(f"() => {LOG_TEXT}.length > {paused}")
    page.fill("#log-filter", "Starting vLLM API server")
    assert re.fullmatch(r"(.*Starting vLLM API server.*\n?)+", page.inner_text("#log"))
    page.fill("#log-filter", "")
    assert page.get_attribute("#log-download", "href") == "/api/logs/vllm/download"
    shot(page, "logs")


def test_a_large_log_opens_at_its_end_loads_older_parts_by_range_and_renders_colours(portal):
    app, context = portal
    def level(n: int) -> str:
        return ("\x1b[1;31mERROR\x1b[0m" if n % 25 == 13 else "\x1b[33mWARNING\x1b[0m" if n % 10 == 7
                else "\x1b[32mINFO\x1b[0m")
    lines = [f"{level(n)} 11-22 10:{n // 600 % 60:02d}:{n // 10 % 60:02d} [engine.py:{100 + n % 50}] "
             f"request line {n:06d} processed" for n in range(20000)]
    (app.root / "var/log/portal/big.log").write_text("\n".join(lines) + "\n")  # ~1.3 MB
    size = (app.root / "var/log/portal/big.log").stat().st_size
    page, ranges = context.new_page(), []
    page.on("request", lambda r: ranges.append(r.headers.get("range")) if "/api/logs/big" in r.url
            and "/stream" not in r.url and "/download" not in r.url else None)
    page.goto(app.portal_url(f"/logs?name=big&token={app.token}"))
    page.wait_for_function(f"() => {LOG_TEXT}.includes('request line 019999 processed')")
    text = page.inner_text("#log")
    assert "line 000000" not in text and "\x1b" not in text and "[0m" not in text
    assert page.locator("#log span.a-31").count() > 0 and page.locator("#log span.a-32").count() > 0
    assert page.eval_on_selector("#log span.a-31", "e => getComputedStyle(e).color") == "rgb(255, 123, 114)"
    assert page.eval_on_selector("#log span.a-bold", "e => getComputedStyle(e).fontWeight") == "700"
    assert page.evaluate("(v => v.scrollTop + v.clientHeight >= v.scrollHeight - 30)(document.querySelector('#log'))")
    shown = page.evaluate(f"{LOG_TEXT}.length")
    assert shown < 80_000 < size  # the end only, not the whole file
    first = int(re.search(r"request line (\d+)", text).group(1))
    page.click("#log-older")
    page.wait_for_function(f"() => {LOG_TEXT}.includes('request line {first - 1:06d} processed')")
    assert page.evaluate(f"{LOG_TEXT}.length") < 2 * shown + 1000
    assert ranges and all(r and re.fullmatch(r"bytes=\d+-\d+", r) for r in ranges), ranges
    spans = [tuple(map(int, r[6:].split("-"))) for r in ranges]
    assert all(end - start < 65536 + 1 for start, end in spans) and spans[-1][1] < size - 60000
    page.evaluate("document.querySelector('#log').scrollTop = document.querySelector('#log').scrollHeight")
    shot(page, "logs-colours")


def test_services_page_lists_programs_stops_starts_and_protects_caddy_and_manager(portal, api):
    app, context = portal
    page = login(app, context, "/services")
    page.wait_for_selector("#services tr[data-name=caddy]")
    names = page.eval_on_selector_all("#services tr", "rows => rows.map(r => r.dataset.name)")
    assert {"caddy", "manager", "vllm"} <= set(names)
    for protected in ("caddy", "manager"):
        assert page.is_disabled(f"tr[data-name={protected}] button[data-action=stop]")
        assert page.is_disabled(f"tr[data-name={protected}] button[data-action=restart]")
    page.wait_for_function("() => document.querySelector('tr[data-name=vllm]').textContent.includes('RUNNING')")
    assert re.search(r"\d+s", page.inner_text("tr[data-name=caddy]"))  # uptime
    shot(page, "services")
    page.click("tr[data-name=vllm] button[data-action=stop]")
    page.wait_for_function("() => document.querySelector('tr[data-name=vllm]').textContent.includes('STOPPED')")
    page.click("tr[data-name=vllm] button[data-action=start]")
    page.wait_for_function("() => document.querySelector('tr[data-name=vllm]').textContent.includes('RUNNING')")
    wait_ready(app, api)
    page.click("#apply-config")  # portal.yaml and the settings are as booted: Caddy's configuration is unchanged
    page.wait_for_function("() => document.querySelector('#apply-result').textContent === 'Nothing changed.'")


def test_apps_page_links_open_with_the_cookie(portal):
    app, context = portal
    page = login(app, context, "/apps")
    link = page.get_attribute("a.app:has-text('vLLM API')", "href")
    assert link == f"https://127.0.0.1:{app.api_port}/docs"
    response = page.goto(app.api_url("/v1/models"))  # another port: the cookie is per host
    assert response.status == 200
    page.goto(app.portal_url("/apps"))
    shot(page, "apps")


def test_every_page_fits_a_phone(portal):
    app, context = portal
    phone = context.browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 800},
                                        is_mobile=True, has_touch=True)
    page = phone.new_page()
    page.goto(app.portal_url(f"/?token={app.token}"))
    for path, ready in (("/", "#host .card"), ("/models", ".instance"), ("/logs", "#log"),
                        ("/services", "#services tr"), ("/apps", "a.app")):
        page.goto(app.portal_url(path))
        page.wait_for_selector(ready)
        # against the device width: with is_mobile the layout viewport (innerWidth) grows to fit content too wide
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path  # no sideways scroll
        for link in ("Overview", "Models", "Logs", "Services", "Apps"):
            assert page.locator(f"nav a:has-text('{link}')").is_visible()
        name = {"/": "overview", "/models": "models"}.get(path)
        if name:
            page.wait_for_timeout(300)
            shot(page, f"{name}-phone")
        else:
            shot(page, f"{path[1:]}-phone")
    phone.close()
