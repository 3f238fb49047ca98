"""In Debian's chromium: a page on another port of this box cannot make the browser act on the portal (issue 12, 1),
the portal's own buttons still work, and /api/docs works offline under the portal's Content-Security-Policy (11)."""
from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest

from tests.appliance import Appliance, free_port

playwright = pytest.importorskip("playwright.sync_api")
from tests.portal.test_pages import ARGS, CHROMIUM  # noqa: E402 (after the playwright import check)

ATTACK = """<!doctype html><html><body>
<form id="f" method="POST" action="{portal}/api/instances/vllm/stop"><input name="x" value="1"></form>
<script>
  fetch("{portal}/api/instances/vllm/stop", {{method: "POST", mode: "no-cors", credentials: "include"}})
    .finally(() => document.getElementById("f").submit());
</script></body></html>"""


class AttackPage(http.server.BaseHTTPRequestHandler):
    """An app on another port of the same box (here AUTH_EXCLUDE'd: anyone may put a page there)."""
    html = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.html)))
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser_app(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium); `make test` installs it")
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), AttackPage)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    app = Appliance(tmp_path_factory.mktemp("csrf"), {"VLLM_MODEL": "acme/tiny-chat"})
    app.attack_port = free_port()
    app.env["PORTAL_CONFIG"] += f"|localhost:{app.attack_port}:{upstream.server_address[1]}:/:Demo"
    app.env["AUTH_EXCLUDE"] = str(app.attack_port)
    AttackPage.html = ATTACK.format(portal=app.portal_url("").rstrip("/")).encode()
    app.start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = browser.new_context(ignore_https_errors=True)
            context.set_default_timeout(15_000)
            yield app, context
            browser.close()
    finally:
        app.stop()
        upstream.shutdown()


def state(app) -> str:
    with app.client() as client:
        return client.get(app.portal_url("/api/instances/vllm")).json()["state"]


def wait_state(app, wanted: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while state(app) != wanted:
        assert time.monotonic() < deadline, f"vllm never became {wanted}"
        time.sleep(0.2)


def test_a_page_on_another_port_cannot_stop_the_engine_with_the_cookie(browser_app):
    app, context = browser_app
    page = context.new_page()
    page.goto(app.portal_url(f"/?token={app.token}"))
    assert any(c["name"] == "appliance_token" for c in context.cookies())
    answers = []
    page.on("response", lambda r: answers.append((r.request.method, r.url, r.status)) if "/stop" in r.url else None)
    page.goto(app.url(app.attack_port, "/"))  # the same site as the portal: same host, another port
    page.wait_for_url("**/api/instances/vllm/stop")  # the auto-submitted form navigated to its answer
    assert "cross-origin request refused" in page.inner_text("body")
    # Both requests carried the cookie (Caddy let them through) and the manager refused them.
    assert [status for method, _, status in answers] == [403, 403], answers
    time.sleep(0.5)
    assert state(app) == "ready"
    assert "stopped" not in app.supervisorctl("status", "vllm").stdout.lower()


def test_the_portals_own_buttons_still_work(browser_app):
    app, context = browser_app
    page = context.new_page()
    page.goto(app.portal_url(f"/models?token={app.token}"))
    page.click(".instance[data-id=vllm] button[data-action=stop]")
    page.wait_for_selector(".instance[data-id=vllm] .badge.stopped")
    wait_state(app, "stopped")
    page.click(".instance[data-id=vllm] button[data-action=start]")
    page.wait_for_selector(".instance[data-id=vllm] .badge.ready")
    wait_state(app, "ready")


def test_api_docs_work_offline_under_the_content_security_policy(browser_app):
    app, context = browser_app
    page = context.new_page()
    elsewhere, violations = [], []
    page.on("request", lambda r: elsewhere.append(r.url) if "127.0.0.1" not in r.url else None)
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(app.portal_url(f"/api/docs?token={app.token}"))
    page.wait_for_selector(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path[data-path='/api/instances']")
    assert "vLLM appliance manager" in page.inner_text(".swagger-ui .info .title")
    assert elsewhere == [] and violations == []
