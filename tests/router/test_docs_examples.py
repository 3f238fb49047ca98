"""The examples of docs/routing.md, run as written against a booted appliance (plain HTTP, so no certificate)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.appliance import REPO, Appliance
from tests.router.conftest import put

DOC = (REPO / "docs/routing.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, re.S)


@pytest.fixture(scope="module")
def documented(tmp_path_factory):
    app = Appliance(tmp_path_factory.mktemp("docs"),
                    {"VLLM_MODEL": "Qwen/Qwen2.5-0.5B-Instruct", "ENABLE_HTTPS": "false"})
    app.start()
    try:
        put(app, "coder", model="Qwen/Qwen2.5-Coder-0.5B-Instruct", aliases=["coder"])
        yield app
    finally:
        app.stop()


def documents(text: str) -> list:
    """The JSON documents curl printed one after another (without newlines between them)."""
    found, decoder, at = [], json.JSONDecoder(), 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        document, at = decoder.raw_decode(text, at)
        found.append(document)
    return found


def local(app: Appliance, text: str) -> str:
    return (text.replace("https://$HOST:8000", f"http://127.0.0.1:{app.api_port}")
            .replace("https://$HOST:1111", f"http://127.0.0.1:{app.portal_port}")
            .replace("https://HOST:8000", f"http://127.0.0.1:{app.api_port}"))


def test_the_curl_examples(documented):
    outputs = []
    for block in blocks("bash"):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", local(documented, block)], capture_output=True,
                              text=True, timeout=60, env={**os.environ, "TOKEN": documented.token})
        assert done.returncode == 0, (block, done.stderr)
        outputs.append(documents(done.stdout))
    chat, (instance, completion), (engine_list,), models, missing, (policy,) = outputs
    assert [m["id"] for m in engine_list["data"]] == ["Qwen/Qwen2.5-Coder-0.5B-Instruct"]  # /instances/coder/: its own
    assert chat[0]["choices"][0]["message"]["content"].startswith("stand-in reply from Qwen/Qwen2.5-Coder")
    assert instance["result"] == "ready" and instance["aliases"] == ["coder"]
    assert completion["model"] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    listed = {m["id"]: m for m in models[0]["data"]}
    assert listed["coder"]["alias_of"] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert listed["Qwen/Qwen2.5-0.5B-Instruct"]["state"] == "ready"
    assert missing[0]["error"]["code"] == "model_not_found"
    assert missing[0] == json.loads(blocks("json")[1])  # the documented answer, word for word
    assert policy["max_queue"] == 20 and policy["on_demand"] is True


def test_the_openai_example(documented):
    code = local(documented, blocks("python")[0]).replace('api_key="TOKEN"', f'api_key="{documented.token}"')
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "'Qwen/Qwen2.5-0.5B-Instruct'" in lines[0] and "'coder'" in lines[0]
    assert lines[1] == "stand-in reply from Qwen/Qwen2.5-0.5B-Instruct: hello"
    assert lines[2] == "stand-in reply from Qwen/Qwen2.5-Coder-0.5B-Instruct: write a loop"
