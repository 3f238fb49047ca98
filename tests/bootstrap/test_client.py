"""vllm-bootstrap's published client (vllm-bootstrap-client 0.2.10), unchanged, against the booted appliance: the
REST control plane at the root of the API port (HTTPS, the token) and the gRPC InferenceService on the API port + 1,
with the stand-in engine and a fake NVML of two GPUs."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import grpc
import httpx
import pytest
from vllm_bootstrap_client import VLLMManager

from tests.appliance import REPO, Appliance

KEY = "inference-key-0123456789abcdef"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    appliance = Appliance(tmp_path_factory.mktemp("bootstrap"), {
        "FAKE_NVML_GPUS": "2", "PYTHONPATH": str(REPO / "tests/fakes/nvml_site"), "API_KEYS": KEY})
    appliance.start()
    deadline = time.monotonic() + 30
    while True:  # the manager starts the bridge once it is up itself: wait until it listens
        try:
            socket.create_connection(("127.0.0.1", appliance.api_port + 1), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, appliance.log("manager")
            time.sleep(0.2)
    yield appliance
    appliance.stop()


@pytest.fixture
def manager(app, monkeypatch):
    """A client as its users make one: the base URL of the API port and the token (the appliance's self-signed
    certificate trusted the only way the client allows, SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(app.cert))

    def make(key: str | None = None) -> VLLMManager:
        return VLLMManager(app.api_url().rstrip("/"), access_key=key or app.token)
    return make


def run(coro):
    return asyncio.run(coro)


def instances(app) -> dict[str, dict]:
    with app.client() as client:
        return {i["id"]: i for i in client.get(app.portal_url("/api/instances")).json()}


def test_run_completes_streams_reads_logs_and_stops_on_exit(app, manager):
    async def flow():
        async with manager() as m:
            async with m.run("acme/tiny-chat", gpu_ids=[0], extra_kwargs={"max_model_len": 4096},
                             ready_timeout=60, ready_poll_interval=0.2) as launch:
                assert launch.state == "ready" and launch.task == "generate" and launch.gpu_ids == [0]
                assert launch.created_at.tzinfo is not None
                assert instances(app)[launch.launch_id]["args"] == ["--max-model-len", "4096"]
                assert [x.launch_id for x in await m.list_launches()] == [launch.launch_id]
                prompts = ["one", "two words", "three more words"]
                done = await m.complete(launch.launch_id, prompts=prompts, max_tokens=5)
                assert len(done) == 3 and all(c.text and c.completion_tokens > 0 for c in done)
                assert [c.prompt_tokens for c in done] == [1, 2, 3]
                streamed = [c async for c in m.complete_stream(launch.launch_id, prompts=prompts, max_tokens=5)]
                assert [c.text for c in streamed] == [c.text for c in done]
                with pytest.raises(grpc.aio.AioRpcError) as wrong:
                    await m.embed(launch.launch_id, ["x"])
                assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                first = await m.logs(launch.launch_id)
                assert first.offset == 0 and "Starting to load model" in first.content
                assert first.next_offset == len(first.content.encode())
                middle = await m.logs(launch.launch_id, offset=10)
                assert middle.content.encode() == first.content.encode()[10:middle.next_offset]
                past = await m.logs(launch.launch_id, offset=10**9)
                assert past.content == "" and past.offset == past.next_offset >= first.next_offset
                launch_id = launch.launch_id
            stopped = await m.status(launch_id)
            assert stopped.state in ("stopping", "stopped")
            deadline = time.monotonic() + 60
            while (stopped := await m.status(launch_id)).state != "stopped":
                assert time.monotonic() < deadline, stopped
                await asyncio.sleep(0.2)
            assert await m.list_launches() == []
            assert launch_id not in instances(app)
            kept = await m.logs(launch_id)  # the log outlives the instance
            assert "Starting to load model" in kept.content
            assert (await m.stop(launch_id)).state == "stopped"  # stopping again is fine
    run(flow())


def test_embed_launch_embeds_in_order_and_streams_one_vector_per_text(app, manager):
    async def flow():
        async with manager() as m, m.run("acme/tiny-embed", task="embed", gpu_ids=[1], ready_timeout=60,
                                        ready_poll_interval=0.2) as launch:
            assert "--runner" in instances(app)[launch.launch_id]["args"]
            texts = [f"text number {i}" for i in range(150)]  # more than one engine batch
            vectors = await m.embed(launch.launch_id, texts)
            assert len(vectors) == 150 and len(set(map(tuple, vectors))) == 150
            assert await m.embed(launch.launch_id, texts[149:]) == vectors[149:]
            streamed = [v async for v in m.embed_stream(launch.launch_id, texts)]
            assert streamed == vectors
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await m.complete(launch.launch_id, prompts=["x"], max_tokens=2)
            assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    run(flow())


def test_owned_gpus_are_refused_with_409_and_nothing_is_launched(app, manager):
    async def flow():
        async with manager() as m:
            first = await m.launch("acme/tiny-chat", gpu_ids=[0])
            try:
                for gpus in ([0], None):  # asked for, and the default (all GPUs)
                    with pytest.raises(httpx.HTTPStatusError) as refused:
                        await m.launch("acme/other-chat", gpu_ids=gpus)
                    assert refused.value.response.status_code == 409
                    assert "GPU 0 is owned" in refused.value.response.text
                assert [x.launch_id for x in await m.list_launches()] == [first.launch_id]
            finally:
                await m.stop(first.launch_id)
    run(flow())


def test_bad_input_is_a_clear_4xx(app, manager):
    async def flow():
        async with manager() as m:
            for kwargs, status in (({"task": "classify"}, 422), ({"extra_kwargs": {"--host": "0.0.0.0"}}, 422),
                                   ({"extra_kwargs": {"host": "0.0.0.0"}}, 422), ({"gpu_ids": [7]}, 422)):
                with pytest.raises(httpx.HTTPStatusError) as refused:
                    await m.launch("acme/tiny-chat", **kwargs)
                assert refused.value.response.status_code == status, refused.value.response.text
            for call in (m.status("launch-nope"), m.stop("launch-nope"), m.logs("launch-nope")):
                with pytest.raises(httpx.HTTPStatusError) as missing:
                    await call
                assert missing.value.response.status_code == 404
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await m.embed("launch-nope", ["x"])
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            assert await m.list_launches() == []
    run(flow())


def test_stats_in_their_shape_with_each_gpu(app, manager):
    async def flow():
        async with manager() as m:
            return await m.stats()
    stats = run(flow())
    assert stats.collected_at.tzinfo is not None and stats.cpu_count and stats.memory_total_bytes
    assert stats.gpu_count == 2 and [g.gpu_id for g in stats.gpus] == [0, 1]
    assert stats.gpus[0].uuid == "GPU-fake-0000" and stats.gpus[0].memory_total_mib == 80 * 1024
    assert stats.gpus[0].power_limit_watts == 700


def test_wrong_token_and_inference_key_are_refused_on_rest_and_wrong_token_on_grpc(app, manager):
    async def flow():
        for key in ("wrong-token-0123456789", KEY):  # an inference key is no admin token
            async with manager(key) as m:
                with pytest.raises(httpx.HTTPStatusError) as refused:
                    await m.list_launches()
                assert refused.value.response.status_code == 401
        async with manager("wrong-token-0123456789") as m:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await m.embed("launch-nope", ["x"])
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with manager(KEY) as m:  # the inference key passes on gRPC: the launch is looked up
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await m.embed("launch-nope", ["x"])
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        async with VLLMManager(app.api_url().rstrip("/")) as m:  # no key at all
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await m.embed("launch-nope", ["x"])
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    run(flow())


def test_a_failed_launch_reports_its_error_through_run_and_stop_still_answers(app, manager):
    async def flow():
        async with manager() as m:
            with pytest.raises(RuntimeError, match="reached terminal state: failed") as failed:
                async with m.run("acme/fail-load-chat", gpu_ids=[0], ready_timeout=60, ready_poll_interval=0.2):
                    pytest.fail("a launch that cannot load is never ready")
            assert "fail-load-chat" in str(failed.value)
            launch_id = str(failed.value).split()[1]
            assert (await m.status(launch_id)).state == "failed"
            assert await m.list_launches() == []
    run(flow())


def test_launch_answers_at_once_and_a_stop_while_loading_ends_it(app, manager):
    async def flow():
        async with manager() as m:
            started = time.monotonic()
            launch = await m.launch("acme/slow-start-chat", gpu_ids=[0])  # the stand-in takes 3 s to load
            assert launch.state == "bootstrapping" and time.monotonic() - started < 2
            answer = await m.stop(launch.launch_id)
            assert answer.state in ("stopping", "stopped")
            deadline = time.monotonic() + 60
            while (status := await m.status(launch.launch_id)).state != "stopped":
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.2)
            assert launch.launch_id not in instances(app)
    run(flow())


def test_the_example_in_the_docs_runs_as_written(app):
    """docs/api.md's example, with this appliance's address and token, in a process of its own."""
    text = (REPO / "docs/api.md").read_text().split("## vllm-bootstrap compatibility", 1)[1]
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("https://HOST:8000", app.api_url().rstrip("/")).replace("YOUR_TOKEN", app.token)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SSL_CERT_FILE": str(app.cert)})
    assert done.returncode == 0, done.stderr
    assert "tokens:" in done.stdout and "choice:" in done.stdout and "2 vectors of 8" in done.stdout


def test_bootstrap_grpc_false_opens_no_grpc_port_and_rest_still_works(boot, monkeypatch):
    app = boot({"BOOTSTRAP_GRPC": "false"})
    assert "InferenceService" not in app.log("manager")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", app.api_port + 1), timeout=1).close()
    monkeypatch.setenv("SSL_CERT_FILE", str(app.cert))

    async def flow():
        async with VLLMManager(app.api_url().rstrip("/"), access_key=app.token) as m:
            return await m.list_launches()
    assert run(flow()) == []


def test_a_taken_grpc_port_is_said_in_the_bridges_log_and_the_rest_comes_up(boot):
    app = boot(start=False)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", app.api_port + 1))
        taken.listen()
        app.start()
        deadline = time.monotonic() + 30
        while "cannot listen on port" not in app.log("manager"):
            assert time.monotonic() < deadline, app.log("manager")
            time.sleep(0.2)
    assert "set BOOTSTRAP_GRPC=false" in app.log("manager")
    with app.client() as client:
        assert client.get(app.api_url("/launch")).json() == []


def test_an_engine_error_comes_back_as_the_calls_status_with_the_engines_message(app, manager):
    async def flow():
        async with manager() as m, m.run("acme/tiny-chat", gpu_ids=[0], extra_kwargs={"max_model_len": 16},
                                        ready_timeout=60, ready_poll_interval=0.2) as launch:
            for call in (m.complete(launch.launch_id, prompts=["a", "b"], max_tokens=100),
                         _first(m.complete_stream(launch.launch_id, prompts=["a", "b"], max_tokens=100))):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "maximum context length is 16" in refused.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as empty:
                await m.complete(launch.launch_id, prompts=[], max_tokens=1)
            assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    run(flow())


async def _first(stream):
    async for item in stream:
        return item
