"""The Models page's LoRA section in a real browser: a LoRA instance's adapters listed, one loaded and unloaded."""
from __future__ import annotations

import json

import pytest

from tests.portal.test_pages import login, portal, shot, wait_ready  # noqa: F401 (portal: the module's fixture)


@pytest.fixture
def lora_instance(portal, tmp_path):  # noqa: F811
    app, _ = portal
    adapter = tmp_path / "sql"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with app.client(timeout=30) as api:
        moved = api.put(app.portal_url("/api/instances/vllm"),
                        json={"model": "acme/tiny-chat", "gpus": [0], "wait": True})
        assert moved.json()["result"] == "ready", moved.text  # GPU 1 free for the LoRA instance
        answer = api.put(app.portal_url("/api/instances/tuned"),
                         json={"model": "acme/lora-base", "lora": {"static-sql": str(adapter)}, "gpus": [1]})
        assert answer.status_code == 202, answer.text
        wait_ready(app, api, "tuned")
        yield app, api, str(adapter)
        api.delete(app.portal_url("/api/instances/tuned"))


def test_models_page_lists_loads_and_unloads_adapters(portal, lora_instance):  # noqa: F811
    app, api, adapter = lora_instance
    _, context = portal
    page = login(app, context, "/models")
    card = "#lora .lora[data-id=tuned]"
    page.wait_for_selector(f"{card} tr[data-name=static-sql]")
    assert "static" in page.inner_text(f"{card} tr[data-name=static-sql]")
    assert page.locator("#lora .lora[data-id=vllm]").count() == 0  # LoRA off there
    page.select_option("#lora-load select[name=instance]", "tuned")
    page.fill("#lora-load input[name=name]", "live-sql")
    page.fill("#lora-load input[name=path]", adapter)
    page.click("#lora-load button[type=submit]")
    page.wait_for_function("() => document.querySelector('#lora-result').textContent.startsWith('Loaded live-sql')")
    page.wait_for_selector(f"{card} tr[data-name=live-sql]")
    assert "runtime" in page.inner_text(f"{card} tr[data-name=live-sql]")
    with app.client() as http:
        reply = http.post(app.api_url("/instances/tuned/v1/completions"), json={"model": "live-sql", "prompt": "hi"})
    assert reply.json()["choices"][0]["text"] == "stand-in reply from live-sql: hi"
    page.locator("#lora").scroll_into_view_if_needed()
    shot(page, "models-lora")
    page.fill("#lora-load input[name=name]", "bad name")
    page.evaluate("document.querySelector('#lora-load').noValidate = true")
    page.click("#lora-load button[type=submit]")
    page.wait_for_function("() => document.querySelector('#lora-result').textContent.startsWith('Refused')")
    assert "must match" in page.inner_text("#lora-result")
    page.click(f"{card} button[data-unload=live-sql]")
    page.wait_for_function(f"() => !document.querySelector('{card} tr[data-name=live-sql]')")
    names = [a["name"] for a in api.get(app.portal_url("/api/instances/tuned/lora")).json()["adapters"]]
    assert names == ["static-sql"]
