"""Every file in provisioning/examples/ run for real (no supervisord): URLs pointed at a loopback server,
apt-get and the engine's pip replaced by recorders, models fetched from a loopback stand-in of the Hub."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from app.provisioning.prepare import prepare
from app.provisioning.record import engine_env
from app.provisioning.run import run
from app.settings import Settings
from tests.appliance import REPO

EXAMPLES = REPO / "provisioning" / "examples"
CHATML = "https://raw.githubusercontent.com/vllm-project/vllm/main/examples/template_chatml.jinja"
RECORDER = '#!/bin/bash\necho "$(basename "$0") $*" >> "{log}"\necho "{name}: pretend to install $*"\n'


@pytest.fixture
def tools(tmp_path, monkeypatch) -> Path:
    """apt-get and a `vllm` whose interpreter (its shebang) records `python -m pip install ...`."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("apt-get", "python"):
        (bin_dir / name).write_text(RECORDER.format(log=log, name=name))
        (bin_dir / name).chmod(0o755)
    (bin_dir / "vllm").write_text(f"#!{bin_dir / 'python'}\n")
    (bin_dir / "vllm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def settings(tmp_path, **env) -> Settings:
    return Settings(APPLIANCE_ROOT=str(tmp_path / "root"), **env)


def test_the_full_example_manifest(tmp_path, loopback, tools, capsys):
    loopback.files["chatml.jinja"] = b"{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}\n"
    loopback.models["Qwen/Qwen2.5-0.5B-Instruct"] = {"config.json": b"{}", "model.safetensors": b"q" * 100}
    loopback.models["meta-llama/Llama-3.2-1B-Instruct"] = {
        "config.json": b"{}", "model.safetensors": b"l" * 100, "tokenizer.json": b"{}",
        "original/consolidated.pth": b"x"}
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text((EXAMPLES / "manifest.yaml").read_text().replace(CHATML, f"{loopback.url}/files/chatml.jinja"))
    s = settings(tmp_path, PROVISIONING_MANIFEST=str(manifest), HF_ENDPOINT=loopback.url)
    for folder in s.folders():
        folder.mkdir(parents=True, exist_ok=True)

    prepared = prepare(s)  # what the boot does with it: the app, the program, engine env
    assert prepared.pending and prepared.portal_config.endswith("|localhost:8888:18888:/:Files")
    programs = prepared.programs(s, [])
    notebook = next(p for p in programs if p.name == "notebook")
    assert notebook.argv == ["python", "-m", "http.server", "18888", "--bind", "127.0.0.1", "--directory", "/workspace"]
    assert notebook.directory == str(s.workspace) and not notebook.autostart  # waits for provisioning
    assert notebook.environment["VLLM_LOGGING_LEVEL"] == "INFO"
    assert engine_env(s) == {"VLLM_LOGGING_LEVEL": "INFO"}

    assert run(s) == 0
    record = json.loads(s.provisioning_record.read_text())
    assert [(x["name"], x["status"]) for x in record["steps"]] == [
        ("apt", "succeeded"), ("pip", "succeeded"), ("files", "succeeded"), ("models", "succeeded")]
    calls = tools.read_text().splitlines()
    assert calls[0] == "apt-get update"
    assert calls[1] == "apt-get install -y --no-install-recommends -- htop"
    assert calls[2] == "python -m pip install --disable-pip-version-check hf-transfer==0.1.8"
    assert (s.workspace / "templates/chatml.jinja").read_bytes() == loopback.files["chatml.jinja"]
    hub = s.hf_home / "hub"
    assert list(hub.glob("models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/*/model.safetensors"))
    llama = hub / "models--meta-llama--Llama-3.2-1B-Instruct/snapshots"
    assert list(llama.glob("*/tokenizer.json")) and not list(llama.glob("*/original/*"))  # allow_patterns
    out = capsys.readouterr().out
    assert "==> step models" in out and "provisioning succeeded" in out


def test_the_model_cache_example(tmp_path, loopback, tools):
    loopback.models["Qwen/Qwen2.5-0.5B-Instruct"] = {"config.json": b"{}", "model.safetensors": b"q" * 100}
    s = settings(tmp_path, PROVISIONING_MANIFEST=str(EXAMPLES / "model-cache.yaml"), HF_ENDPOINT=loopback.url)
    for folder in s.folders():
        folder.mkdir(parents=True, exist_ok=True)
    prepared = prepare(s)
    prepared.programs(s, [])
    assert engine_env(s) == {"HF_HUB_OFFLINE": "1"}
    assert run(s) == 0
    assert list((s.hf_home / "hub").glob("models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/*/config.json"))
    assert not tools.exists()  # no apt, no pip


def test_the_vast_style_script_installs_with_the_engines_pip_and_downloads(tmp_path, loopback, tools):
    loopback.files["a.txt"] = b"a\n"
    pip = tools.parent / "bin" / "pip"
    pip.write_text(RECORDER.format(log=tools, name="pip"))
    pip.chmod(0o755)
    env = {**os.environ, "WORKSPACE": str(tmp_path / "ws"), "PIP_PACKAGES": "tqdm==4.66.5 rich",
           "DOWNLOAD_URLS": f"{loopback.url}/files/a.txt"}
    result = subprocess.run(["bash", str(EXAMPLES / "vast-style.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert tools.read_text().splitlines() == ["pip install --no-cache-dir tqdm==4.66.5 rich"]
    assert (tmp_path / "ws/data/a.txt").read_text() == "a\n" and "done: 1 file(s)" in result.stdout
