"""`serve` against the booted appliance: instances created, waited for, used and deleted whatever happens."""
from __future__ import annotations

import asyncio
import re
import time

import pytest
from vllm_appliance_client import BadRequestError, NotFoundError, StartupError

from tests.client.conftest import connect, connect_async, ids, needs_router


def metric(app, instance: str, name: str) -> float:
    """One of an instance's engine metrics, read through its own route."""
    with app.client() as http:
        text = http.get(app.api_url(f"/instances/{instance}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"vllm:{name}{{"))


def test_serve_waits_answers_in_order_and_deletes_what_it_made(appliance, capsys):
    with connect(appliance, "ordered-0") as client:
        with client.serve("acme/ordered-chat", id="ordered") as served:
            assert served.instances == ["ordered-0"] and "ordered-0" in ids(appliance)
            answers = served.chat([[{"role": "user", "content": f"question {i}"}] for i in range(40)],
                                  max_tokens=16, concurrency=8)
    assert answers == [f"stand-in reply from acme/ordered-chat: question {i}" for i in range(40)]
    err = capsys.readouterr().err
    assert "ordered-0: ready" in err and "chat 40/40" in err and "deleted instance ordered-0" in err
    assert "ordered-0" not in ids(appliance)


@pytest.mark.parametrize("interrupt", [RuntimeError("the user's code failed"), KeyboardInterrupt()])
def test_an_exception_or_ctrl_c_inside_serve_leaves_no_instance(appliance, interrupt):
    with connect(appliance) as client, pytest.raises(type(interrupt)):  # noqa: PT012
        with client.serve("acme/doomed-chat", id="doomed", progress=False):
            assert "doomed-0" in ids(appliance)
            raise interrupt
    assert "doomed-0" not in ids(appliance)


def test_keep_leaves_the_instances_running(appliance):
    with connect(appliance, "kept-0") as client:
        with client.serve("acme/kept-chat", id="kept", keep=True, progress=False) as served:
            pass
        try:
            assert client.instance("kept-0")["state"] == "ready"
            assert served.generate(["still there"]) == ["stand-in reply from acme/kept-chat: still there"]
        finally:
            client.delete_instance("kept-0")


def test_an_engine_that_fails_raises_with_its_last_log_lines_and_is_deleted(appliance):
    with connect(appliance) as client, pytest.raises(StartupError) as caught:
        with client.serve("acme/fail-load-chat", id="broken", progress=False):
            pytest.fail("serve yielded for an engine that failed")
    assert caught.value.instance == "broken-0"
    assert any("RuntimeError: failed to load acme/fail-load-chat" in line for line in caught.value.last_log)
    assert "failed to load" in str(caught.value)
    assert "broken-0" not in ids(appliance)


def test_an_engine_not_ready_in_time_raises_and_is_deleted(appliance):
    with connect(appliance) as client, pytest.raises(StartupError, match="not ready after 1 s"):
        with client.serve("acme/slow-start-chat", id="slow", startup_timeout=1, progress=False):
            pytest.fail("serve yielded before the engine was ready")
    assert "slow-0" not in ids(appliance)


def test_bad_input_is_a_typed_error_with_the_servers_message_and_nothing_is_left(appliance):
    with connect(appliance) as client, pytest.raises(BadRequestError, match="--host 0.0.0.0 would publish"):
        with client.serve("acme/open-chat", id="open", args=["--host", "0.0.0.0"], progress=False):
            pass
    assert not {i for i in ids(appliance) if i.startswith("open")}


def test_503_is_retried_after_retry_after(appliance):
    with connect(appliance, "busy-0") as client:
        with client.serve("acme/busy-chat", id="busy", env={"FAKE_VLLM_BUSY_FIRST": "2"}, progress=False) as served:
            started = time.monotonic()
            answers = served.generate(["one", "two"], concurrency=1)
            elapsed = time.monotonic() - started
            log = client.http.get("/api/instances/busy-0/logs").text
    assert answers == ["stand-in reply from acme/busy-chat: one", "stand-in reply from acme/busy-chat: two"]
    assert log.count("busy: 503 sent") == 2
    assert elapsed >= 2  # Retry-After: 1, twice


def test_engine_errors_are_typed_with_the_engines_message(appliance):
    with connect(appliance, "vllm") as client:
        served = client.model("acme/tiny-chat")
        with pytest.raises(BadRequestError, match="maximum context length is 4096"):
            served.generate(["hello"], max_tokens=100000)
        with pytest.raises(NotFoundError, match="does not exist"):
            client.model("acme/no-such-model").chat(["hello"])


def test_the_inference_address_comes_from_the_appliance(appliance):
    with connect(appliance) as client:
        assert client.api_url == appliance.api_url("").rstrip("/")
        assert client.models() == ["acme/tiny-chat"] or "acme/tiny-chat" in client.models()


def test_openai_client_for_a_served_model(appliance):
    with connect(appliance) as client:
        ai = client.client("acme/tiny-chat")
        reply = ai.chat.completions.create(model="acme/tiny-chat", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "stand-in reply from acme/tiny-chat: hi"
        with pytest.raises(NotFoundError, match="serves no model 'acme/nope'"):
            client.client("acme/nope")


def test_async_twin_serves_batches_and_cleans_up(appliance):
    async def main():
        async with connect_async(appliance, "twin-0") as client:
            async with client.serve("acme/twin-chat", id="twin", progress=False) as served:
                chats = await served.chat([f"c {i}" for i in range(20)], concurrency=4)
                [extra] = await served.generate(["g"], return_extra=True, max_tokens=3)
                vectors = await served.embed([f"t {i}" for i in range(10)], batch_size=3)
                during = ids(appliance)
        return chats, extra, vectors, during

    chats, extra, vectors, during = asyncio.run(main())
    assert chats == [f"stand-in reply from acme/twin-chat: c {i}" for i in range(20)]
    assert extra.text == "stand-in reply from" and extra.finish_reason == "length"
    assert extra.usage.completion_tokens == 3 and extra.model == "acme/twin-chat"
    assert len(vectors) == 10 and len({tuple(v) for v in vectors}) == 10
    assert "twin-0" in during and "twin-0" not in ids(appliance)


def test_async_cancel_inside_serve_leaves_no_instance(appliance):
    async def main():
        async with connect_async(appliance) as client:
            async def work():
                async with client.serve("acme/cancelled-chat", id="cancelled", progress=False):
                    await asyncio.sleep(3600)
            task = asyncio.create_task(work())
            while "cancelled-0" not in ids(appliance):
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert "cancelled-0" not in ids(appliance)


@needs_router
def test_two_replicas_behind_one_name_share_a_batch_of_64(appliance):
    with connect(appliance) as client:
        with client.serve("acme/replica-chat", id="pair", replicas=2, progress=False) as served:
            assert served.instances == ["pair-0", "pair-1"]
            answers = served.chat([f"question {i}" for i in range(64)], concurrency=16)
            counts = [metric(appliance, i, "request_success_total") for i in served.instances]
    assert answers == [f"stand-in reply from acme/replica-chat: question {i}" for i in range(64)]
    assert sum(counts) == 64 and min(counts) > 0, counts
    assert not {i for i in ids(appliance) if re.fullmatch(r"pair-\d", i)}
