"""The portal where things go wrong or look different: the live log survives a manager restart without losing or
repeating lines, app links work behind a proxy that puts the port in the host name (RunPod), and the Copy buttons
copy. Same browser set-up as test_pages.py: Debian's chromium driven by playwright, through Caddy (TLS + auth).
"""
from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import pytest

from tests.appliance import Appliance

playwright = pytest.importorskip("playwright.sync_api")
from tests.portal.test_pages import ARGS, CHROMIUM  # noqa: E402 (after the playwright import check)


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium); `make test` installs it")
    app = Appliance(tmp_path_factory.mktemp("resilience"), {"VLLM_MODEL": "acme/tiny-chat"})
    app.start()
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            context = browser.new_context(ignore_https_errors=True)
            context.set_default_timeout(10_000)
            yield app, browser, context
            browser.close()
    finally:
        app.stop()


def login(app, context, path: str):
    page = context.new_page()
    page.goto(app.portal_url(f"{path}{'&' if '?' in path else '?'}token={app.token}"))
    return page


class Ticker:
    """Appends `tick N` to a log of the log folder every 50 ms, like a busy program."""

    def __init__(self, path: Path):
        self.path, self.count, self.stopped = path, 0, threading.Event()
        self.path.write_text("".join(f"tick {n}\n" for n in range(20000)))  # ~190 KB of history before the page opens
        self.count = 20000
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stopped.wait(0.05):
            with self.path.open("a") as handle:
                handle.write(f"tick {self.count}\n")
            self.count += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()


def test_the_live_log_resumes_after_a_manager_restart_without_losing_or_repeating_lines(portal):
    app, _, context = portal
    with Ticker(app.root / "var/log/portal/ticker.log") as ticker:
        page = login(app, context, "/logs?name=ticker")
        page.wait_for_function("() => /tick 200[1-9]\\d/.test(document.querySelector('#log').textContent)")
        pid = app.supervisorctl("pid", "manager").stdout.strip()
        subprocess.run(["kill", "-9", pid], check=True)  # supervisor starts it again; the SSE stream breaks
        after = ticker.count + 60  # three seconds of ticks after the kill, delivered by the new manager
        page.wait_for_function(f"() => document.querySelector('#log').textContent.includes('tick {after}\\n')",
                               timeout=30_000)
    assert app.supervisorctl("pid", "manager").stdout.strip() != pid
    ticks = [int(n) for n in re.findall(r"^tick (\d+)$", page.inner_text("#log"), re.M)]
    first = ticks[0]
    assert ticks == list(range(first, first + len(ticks))), "lines lost or repeated across the reconnection"
    assert first > 0 and ticks[-1] >= after  # opened at the end of the file, followed past the restart


def test_app_links_and_snippets_behind_a_port_in_the_host_name_proxy(portal):
    app, browser, context = portal
    page = login(app, context, "/apps")
    # Here (a host name with ports): plain links; the cookie of 127.0.0.1 covers every port.
    assert page.get_attribute("a.app:has-text('vLLM API')", "href") == f"https://127.0.0.1:{app.api_port}/docs"
    # RunPod: the portal is https://<pod>-<portal port>.proxy.runpod.net; the API is the same name with its port.
    runpod = {"protocol": "https:", "hostname": f"abc123-{app.portal_port}.proxy.runpod.net", "port": ""}
    assert page.evaluate(f"publicBase({app.api_port}, {runpod})") == f"https://abc123-{app.api_port}.proxy.runpod.net"
    link = page.evaluate(f"appLink({app.api_port}, '/docs', {runpod})")
    # another host: no cookie there
    assert link == f"https://abc123-{app.api_port}.proxy.runpod.net/docs?token={app.token}"
    assert page.evaluate(f"appLink({app.api_port}, '/docs', location)") == f"https://127.0.0.1:{app.api_port}/docs"
    # such a link logs a browser without the cookie in, and Caddy takes the token out of the address
    fresh = browser.new_context(ignore_https_errors=True)
    other = fresh.new_page()
    response = other.goto(app.api_url(f"/v1/models?token={app.token}"))
    assert response.status == 200 and "token=" not in other.url and "acme/tiny-chat" in other.content()
    fresh.close()
    # pages other than Apps never carry the token
    models = login(app, context, "/models")
    assert models.get_attribute("body", "data-token") is None


def test_copy_buttons_copy_the_snippet_with_and_without_the_clipboard_api(portal):
    app, browser, _ = portal
    context = browser.new_context(ignore_https_errors=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app.portal_url("/").rstrip("/"))
    page = login(app, context, "/models")
    copy = ".instance[data-id=vllm] details:first-of-type button.copy"
    page.wait_for_selector(".instance[data-id=vllm] .badge.ready")
    page.click(copy)  # the button says so once the copy is done (an await later)
    page.wait_for_function(f"() => document.querySelector({copy!r})?.textContent === 'Copied'")
    assert f"curl https://127.0.0.1:{app.api_port}/v1/" in page.evaluate("navigator.clipboard.readText()")
    # without the Clipboard API (plain http): the textarea fallback
    page.evaluate("navigator.clipboard.writeText('')")
    page.add_init_script("Object.defineProperty(navigator, 'clipboard', { value: undefined })")
    plain = context.new_page()
    plain.add_init_script("Object.defineProperty(navigator, 'clipboard', { value: undefined })")
    plain.goto(app.portal_url("/models"))
    plain.wait_for_selector(".instance[data-id=vllm] .badge.ready")
    python = copy.replace("first-of-type", "nth-of-type(2)")
    plain.click(python)  # the Python snippet
    plain.wait_for_function(f"() => document.querySelector({python!r})?.textContent === 'Copied'")
    assert plain.is_visible(".instance[data-id=vllm] details:nth-of-type(2) pre.snippet")  # and shown
    clipboard = context.new_page()
    clipboard.goto(app.portal_url("/apps"))
    assert "from openai import OpenAI" in clipboard.evaluate("navigator.clipboard.readText()")
    context.close()


def test_every_button_is_reachable_at_phone_width(portal):
    """Nothing the user must tap is clipped off the side at 390 px (a page can fit without sideways scrolling and
    still cut its buttons off inside a box that hides its overflow)."""
    app, browser, _ = portal
    phone = browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 800}, is_mobile=True,
                                has_touch=True)
    page = login(app, phone, "/")
    for path, ready in (("/", "#host .card"), ("/models", ".instance button"), ("/logs", "#log-pause"),
                        ("/services", "#services tr button"), ("/apps", "a.app")):
        page.goto(app.portal_url(path))
        page.wait_for_selector(ready)
        # innerWidth is no measure here: a mobile browser widens the layout viewport to fit content that is too
        # wide (and zooms out), so compare with the device's 390 px
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, f"{path}: wider than the phone"
        clipped = page.evaluate("""() => [...document.querySelectorAll('main button, main a.button, main a.app, nav a')]
            .filter(e => e.offsetParent !== null)
            .filter(e => { const r = e.getBoundingClientRect();
                           const x = r.left + r.width / 2, y = r.top + r.height / 2;
                           if (r.left < 0 || r.right > 391) return true;
                           e.scrollIntoView({ block: 'center' });
                           const s = e.getBoundingClientRect(),
                                 hit = document.elementFromPoint(s.left + s.width / 2, s.top + s.height / 2);
                           return !(hit && (hit === e || e.contains(hit))); })
            .map(e => e.textContent.trim() + ' ' + (e.closest('[data-id],[data-name]')?.dataset.id
                                                    || e.closest('[data-name]')?.dataset.name || ''))""")
        assert not clipped, f"{path}: cut off or covered at 390 px: {clipped}"
    phone.close()


def test_a_portal_left_open_by_auth_exclude_never_shows_the_token(boot):
    app = boot({"VLLM_MODEL": ""}, wait_engine=False)
    with app.client() as client:
        # logged in: the Apps page has it
        assert f'data-token="{app.token}"' in client.get(app.portal_url("/apps")).text
        assert client.get(app.portal_url("/apps")).headers["cache-control"] == "no-store"
        assert app.token not in client.get(app.portal_url("/models")).text
    open_portal = boot({"VLLM_MODEL": ""}, start=False)  # its ports are known once it exists
    open_portal.env["AUTH_EXCLUDE"] = str(open_portal.portal_port)
    open_portal.env["ALLOW_OPEN_PORTAL"] = "true"  # an open portal is an explicit choice (app/checks.py)
    open_portal.start(wait_engine=False)
    with open_portal.client(auth=False) as anonymous:
        page = anonymous.get(open_portal.portal_url("/apps"))
        assert page.status_code == 200 and open_portal.token not in page.text
