"""The stand-in `vllm`'s LoRA surface, as vLLM 0.32 has it: --enable-lora, --lora-modules, adapters in /v1/models,
the runtime load/unload endpoints only with VLLM_ALLOW_RUNTIME_LORA_UPDATING, and its error messages."""
from __future__ import annotations

import json

from tests.fakes.test_fake_vllm import fake  # noqa: F401 (the fixture)

RUNTIME = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def adapter(tmp_path, name="sql"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    return str(folder)


def test_static_adapters_are_listed_with_their_parent_and_answer(fake, tmp_path):  # noqa: F811
    sql = adapter(tmp_path)
    f = fake("acme/base", "--enable-lora", "--lora-modules", f"sql={sql}", "hub=acme/hub-lora")
    f.wait_healthy()
    models = json.loads(f.request("GET", "/v1/models")[2])["data"]
    assert [(m["id"], m["root"], m["parent"]) for m in models] == [
        ("acme/base", "acme/base", None), ("sql", sql, "acme/base"), ("hub", "acme/hub-lora", "acme/base")]
    status, _, body = f.request("POST", "/v1/completions", {"model": "sql", "prompt": "hi"})
    assert status == 200 and json.loads(body)["choices"][0]["text"] == "stand-in reply from sql: hi"
    assert f.request("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": sql})[0] == 404  # not enabled


def test_a_static_adapter_that_cannot_be_found_fails_the_start(fake, tmp_path):  # noqa: F811
    f = fake("acme/base", "--enable-lora", "--lora-modules", f"gone={tmp_path / 'gone'}")
    assert f.proc.wait(timeout=5) == 1
    assert f.stderr().rstrip().endswith(f"ValueError: Loading lora gone failed: No adapter found for {tmp_path}/gone")


def test_runtime_load_and_unload(fake, tmp_path):  # noqa: F811
    sql = adapter(tmp_path)
    f = fake("acme/base", "--enable-lora", env=RUNTIME)
    f.wait_healthy()
    load = lambda body: f.request("POST", "/v1/load_lora_adapter", body)  # noqa: E731
    status, _, body = load({"lora_name": "sql", "lora_path": sql})
    assert (status, body) == (200, b"Success: LoRA adapter 'sql' added successfully.")
    assert json.loads(load({"lora_name": "sql", "lora_path": sql})[2])["error"]["message"].startswith(
        "The lora adapter 'sql' has already been loaded.")
    assert load({"lora_name": "acme/base", "lora_path": sql})[0] == 400
    status, _, body = load({"lora_name": "x", "lora_path": "acme/missing-lora"})
    assert status == 404 and b"No adapter found for acme/missing-lora" in body
    assert load({"lora_name": "x"})[0] == 400
    assert "sql" in [m["id"] for m in json.loads(f.request("GET", "/v1/models")[2])["data"]]
    unload = lambda name: f.request("POST", "/v1/unload_lora_adapter", {"lora_name": name})  # noqa: E731
    assert unload("sql")[0] == 200 and unload("sql")[0] == 404
    assert f.request("POST", "/v1/completions", {"model": "sql", "prompt": "hi"})[0] == 404


def test_runtime_load_without_enable_lora_fails_as_vllm_does(fake):  # noqa: F811
    f = fake("acme/base", env=RUNTIME)
    f.wait_healthy()
    status, _, body = f.request("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "acme/x"})
    assert status == 500 and b"LoRA is not enabled" in body
