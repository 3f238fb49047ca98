"""The portal in a real browser (Debian's chromium, driven by playwright), through Caddy with TLS and auth."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.appliance import REPO, Appliance

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-quic", "--no-first-run"]


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium); `make test` installs it")
    app = Appliance(tmp_path_factory.mktemp("portal"), {"VLLM_MODEL": "acme/tiny-chat", "FAKE_VLLM_LOG_EVERY": "0.5"})
    app.start()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
        yield app, context
        browser.close()
    app.stop()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def login(app, context, path: str = "/"):
    page = context.new_page()
    page.goto(app.portal_url(f"{path}?token={app.token}"))
    assert "token=" not in page.url  # the token left the address bar, the cookie stays
    return page


def test_login_with_token_and_overview_updates_without_reload(portal):
    app, context = portal
    page = login(app, context)
    page.wait_for_selector("#host .card")
    assert "No GPU" in page.inner_text("#gpus")  # a plain message, not an error
    first = page.inner_text("#updated")
    page.wait_for_function(f"document.querySelector('#updated').textContent !== {first!r}", timeout=5000)
    page.wait_for_function("document.querySelector('#health').classList.contains('ok')", timeout=10000)
    shot(page, "overview")


def test_without_the_cookie_the_portal_asks_for_credentials(portal):
    app, context = portal
    other = context.browser.new_context(ignore_https_errors=True)
    with pytest.raises(playwright.Error, match="ERR_INVALID_AUTH_CREDENTIALS"):  # headless: the login dialog is refused
        other.new_page().goto(app.portal_url("/"))
    other.close()


def test_models_page_swaps_a_model_to_ready_and_shows_snippets(portal):
    app, context = portal
    page = login(app, context, "/models")
    page.wait_for_selector(".instance .badge.ready")
    page.fill("#swap input[name=model]", "acme/swapped-in-browser")
    page.fill("#swap input[name=args]", "--seed 5")
    page.click("#swap button[type=submit]")
    page.wait_for_function("document.querySelector('#swap-result').textContent.startsWith('Accepted')")
    page.wait_for_function("""[...document.querySelectorAll('.instance')].some(c =>
        c.textContent.includes('acme/swapped-in-browser') && c.querySelector('.badge.ready'))""", timeout=20000)
    page.click(".instance details summary")
    snippet = page.inner_text(".instance pre.snippet")
    assert f"https://127.0.0.1:{app.api_port}/v1/chat/completions" in snippet and "acme/swapped-in-browser" in snippet
    shot(page, "models")


def test_a_failed_swap_shows_the_reason(portal):
    app, context = portal
    page = login(app, context, "/models")
    page.fill("#swap input[name=id]", "broken")
    page.fill("#swap input[name=model]", "acme/fail-load")
    page.click("#swap button[type=submit]")
    page.wait_for_selector(".instance[data-id=broken] .badge.failed", timeout=20000)
    assert "RuntimeError" in page.inner_text(".instance[data-id=broken]")
    shot(page, "models-failed")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click(".instance[data-id=broken] button[data-action=delete]")
    page.wait_for_function("!document.querySelector('.instance[data-id=broken]')", timeout=10000)


def test_logs_page_tails_live_and_filters(portal):
    app, context = portal
    page = login(app, context, "/logs")
    page.wait_for_function("document.querySelector('#log').textContent.includes('Avg prompt throughput')")
    count = page.evaluate("document.querySelector('#log').textContent.split('Avg prompt throughput').length")
    page.wait_for_function(f"document.querySelector('#log').textContent.split('Avg prompt throughput').length > {count}",
                           timeout=2000)  # a new line within 2 s
    page.fill("#log-filter", "Starting vLLM API server")
    assert re.fullmatch(r"(.*Starting vLLM API server.*\n?)+", page.inner_text("#log"))
    page.fill("#log-filter", "")
    assert page.get_attribute("#log-download", "href") == "/api/logs/vllm/download"
    shot(page, "logs")


def test_services_page_lists_programs_and_protects_caddy_and_manager(portal):
    app, context = portal
    page = login(app, context, "/services")
    page.wait_for_selector("#services tr[data-name=caddy]")
    assert page.is_disabled("tr[data-name=caddy] button[data-action=stop]")
    assert page.is_disabled("tr[data-name=manager] button[data-action=stop]")
    assert "RUNNING" in page.inner_text("tr[data-name=vllm]")
    shot(page, "services")


def test_apps_page_links_open_with_the_cookie(portal):
    app, context = portal
    page = login(app, context, "/apps")
    link = page.get_attribute("a.app:has-text('vLLM API')", "href")
    assert link == f"https://127.0.0.1:{app.api_port}/docs"
    response = page.goto(app.api_url("/v1/models"))  # another port: the cookie is per host
    assert response.status == 200
    page.goto(app.portal_url("/apps"))
    shot(page, "apps")


def test_phone_width_layout(portal):
    app, context = portal
    phone = context.browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 800})
    page = phone.new_page()
    page.goto(app.portal_url(f"/models?token={app.token}"))
    page.wait_for_selector(".instance")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")  # no sideways scrolling
    shot(page, "models-phone")
    phone.close()
