"""Provisioning in the portal (Debian's chromium, driven by playwright): waiting engines, a failure, a re-run."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.appliance import REPO

playwright = pytest.importorskip("playwright.sync_api")
from tests.portal.test_pages import ARGS, CHROMIUM  # noqa: E402 (after the playwright import check)


def test_the_portal_shows_waiting_engines_a_failure_and_reruns(boot, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (apt-get install chromium); `make test` installs it")
    script = tmp_path / "setup.sh"  # waits for $WORKSPACE/go; fails the first time, succeeds once `fixed` exists
    script.write_text('for i in $(seq 300); do [ -e "$WORKSPACE/go" ] && break; sleep 0.1; done\n'
                      'echo "step 3/3: almost there"\n'
                      '[ -e "$WORKSPACE/fixed" ] || { echo "cannot reach the package mirror"; exit 3; }\n')
    app = boot({"PROVISIONING_SCRIPT": str(script), "VLLM_MODEL": "acme/tiny-chat"}, wait_engine=False)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_context(ignore_https_errors=True).new_page()
            page.goto(app.portal_url(f"/?token={app.token}"))
            page.wait_for_selector("#provisioning .badge.running")
            panel = page.inner_text("#provisioning")
            assert "Waiting" in panel and "vllm" in panel.split("Waiting", 1)[1].split("\n", 2)[1], panel
            page.goto(app.portal_url("/models"))
            page.wait_for_selector(".instance .badge.waiting")
            assert "waiting for provisioning" in page.inner_text(".instance")

            (app.workspace / "go").touch()
            page.goto(app.portal_url("/"))
            page.wait_for_selector("#provisioning h3 .badge.failed", timeout=30000)
            text = page.inner_text("#provisioning")
            assert "exited with 3" in text and "Exit code\n3" in text.replace("\t", "\n")
            (REPO / "tests" / "artifacts").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO / "tests" / "artifacts" / "provisioning-failed.png"))
            page.click("#provisioning a.button")  # to the Logs page, on provisioning.log
            page.wait_for_function(
                "() => document.querySelector('#log').textContent.includes('cannot reach the package mirror')")

            (app.workspace / "fixed").touch()
            page.goto(app.portal_url("/"))
            page.on("dialog", lambda dialog: dialog.accept())
            page.click("#provisioning-rerun")
            page.wait_for_selector("#provisioning h3 .badge.succeeded", timeout=30000)
        finally:
            browser.close()
    app.wait_engine()
