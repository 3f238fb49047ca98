"""Caches on the volume: a second start of the same model with the caches the first one left, against a start with
empty caches (the baseline), with the real vLLM CPU build and its compiled (not eager) mode, where caches matter.

The engine gets the same cache variables as in the appliance (app/engine.py `caches`), pointed at a folder of
this run. Cold and warm starts alternate, so a drift of the machine's speed hits both alike.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from app.engine import caches
from app.settings import Settings
from bench.report import table, write_section
from bench.swap import ENGINE_VENV, direct_start, spread
from tests.appliance import REPO

ARGS = ["--max-model-len", "256", "--kv-cache-memory-bytes", "134217728", "--dtype", "float32"]
ROUNDS = 3


def main() -> None:
    vllm = ENGINE_VENV / "bin/vllm"
    if not vllm.exists():
        raise SystemExit(f"the real engine is not installed ({vllm}): run scripts/install-engine.sh {ENGINE_VENV}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "tiny-a"
        subprocess.run([str(ENGINE_VENV / "bin/python"), str(REPO / "tests/engine/tiny_model.py"), str(model),
                        "--name", "tiny-a"], check=True, capture_output=True)
        settings = Settings(WORKSPACE=str(root / "workspace"))
        env = caches(settings)
        cold, warm = [], []
        # untimed: neither side pays for cold file caches (the first import of vLLM and torch from disk)
        direct_start(vllm, str(model), ARGS, "tiny-a", 900, "http://127.0.0.1:9", caches(Settings(WORKSPACE=tmp)))
        for _ in range(ROUNDS):
            shutil.rmtree(settings.cache_dir, ignore_errors=True)
            cold.append(direct_start(vllm, str(model), ARGS, "tiny-a", 900, "http://127.0.0.1:9", env)[0])
            warm.append(direct_start(vllm, str(model), ARGS, "tiny-a", 900, "http://127.0.0.1:9", env)[0])
        size = sum(f.stat().st_size for f in settings.cache_dir.rglob("*") if f.is_file()) / 2**20
    ratio = statistics.median(warm) / statistics.median(cold)
    body = ("Seconds from `vllm serve` until `/v1/models` lists the model, median (min–max) of "
            f"{ROUNDS} rounds after one untimed start (file caches warm); a tiny Llama, compiled mode "
            "(no `--enforce-eager`), the appliance's cache variables "
            "(`VLLM_CACHE_ROOT`, `TORCHINDUCTOR_CACHE_DIR`, `TRITON_CACHE_DIR`, `XDG_CACHE_HOME` under "
            "`<workspace>/cache`). Cold: the cache folder emptied first (baseline). Warm: right after a cold start, "
            "with what it left.\n\n"
            + table(["start", "seconds", "× cold"],
                    [["cold (empty caches)", spread(cold), "1.0"], ["warm (caches kept)", spread(warm),
                                                                   f"{ratio:.2f}"]])
            + f"\n\nThe caches held {size:.0f} MiB after a start. "
            + ("Reading it: on this vLLM CPU build the kept caches save little or nothing: it recompiles the model "
               "at every start (as found when the engine was first set up); on GPU builds vLLM reuses its "
               "compiled graphs from `VLLM_CACHE_ROOT`, which now lives on the volume." if ratio > 0.9 else
               f"Reading it: a start with the caches kept takes {ratio:.2f} of a cold one."))
    write_section("caches", "Second start with caches on the volume", body, "python -m bench caches")


if __name__ == "__main__":
    main()
