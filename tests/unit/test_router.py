"""The router's logic without a server: the model of a request, picking a replica, the queue rules."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from app.instance import Phase
from app.router.choose import decide
from app.router.extract import model_of, with_model
from app.router.proxy import per_instance
from app.router.queueing import Starter, wait_for_route
from app.router.state import State
from app.router.stats import usage
from app.routing_table import Route, Table


def table(*routes: Route, default: str = "vllm") -> Table:
    return Table(default=default, manager_port=1, routes=list(routes))


def route(id: str, *names: str, phase: Phase = Phase.READY, port: int = 18001, **policy) -> Route:
    return Route(id=id, names=list(names or [id]), port=port, phase=phase, **policy)


# --- the model of a request ---------------------------------------------------------------------------------------
def test_model_from_a_json_body():
    assert model_of("application/json", b'{"model": "acme/chat", "messages": []}') == "acme/chat"
    assert model_of(None, b' {"messages": [], "model": "m"}') == "m"  # no content type: JSON all the same
    assert model_of("application/json; charset=utf-8", b'{"messages": [{"model": "inner"}]}') is None  # top level only


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'{"model": 3}', b'{"model": ""}', b"\xff\xfe"])
def test_no_model_when_the_body_names_none(body):
    assert model_of("application/json", body) is None


def test_model_from_a_multipart_form_and_an_alias_replaced_there():
    request = httpx.Request("POST", "http://x/v1/audio/transcriptions", data={"model": "whisper", "language": "en"},
                            files={"file": ("a.wav", b"RIFF\r\n\r\n--binary\r\nname=\"model\"")})
    body, kind = request.read(), request.headers["content-type"]
    assert model_of(kind, body) == "whisper"
    swapped = with_model(kind, body, "openai/whisper-large")
    assert model_of(kind, swapped) == "openai/whisper-large"
    assert swapped.replace(b"openai/whisper-large", b"whisper") == body  # nothing else changed


def test_a_form_without_model_and_an_alias_in_json():
    assert model_of("multipart/form-data; boundary=xyz", b'--xyz\r\nContent-Disposition: form-data; name="a"\r\n\r\n'
                    b"1\r\n--xyz--\r\n") is None
    assert json.loads(with_model("application/json", b'{"model":"chat","n":1}', "acme/chat")) == \
        {"model": "acme/chat", "n": 1}


def test_usage_is_read_from_the_end_of_a_stream_or_a_json_answer():
    stream = b'data: {"choices":[]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":16,' \
             b'"prompt_tokens_details":null}}\n\ndata: [DONE]\n\n'
    assert usage(stream) == (7, 16)
    assert usage(b'{"id":"x"}') == (None, None)


# --- picking a replica ------------------------------------------------------------------------------------------------
def test_requests_go_to_the_ready_replica_with_fewest_in_flight():
    async def run():
        state = State(table(route("a", "m"), route("b", "m", port=18002), route("c", "m", phase=Phase.STARTING)))
        state.begin(state.routes["a"])
        assert decide(state, "m").route.id == "b"
        state.begin(state.routes["b"])
        state.begin(state.routes["b"])
        assert decide(state, "m").route.id == "a"
        state.end(state.routes["b"])
        state.end(state.routes["b"])
        state.end(state.routes["a"])
        state = State(table(route("a", "m"), route("b", "m", port=18002), route("c", "m", phase=Phase.STARTING)))
        picked = []  # equally busy: they take turns
        for _ in range(4):
            chosen = decide(state, "m").route
            state.begin(chosen)
            state.end(chosen)
            picked.append(chosen.id)
        assert sorted(picked) == ["a", "a", "b", "b"]
        assert decide(state, "m", exclude={"a", "b"}).action == "queue"  # c is starting
    asyncio.run(run())


def test_what_happens_to_a_request_by_phase():
    async def run():
        state = State(table(route("vllm", "chat", "alias"), route("s", phase=Phase.STOPPED),
                            route("off", phase=Phase.STOPPED, on_demand=False), route("f", phase=Phase.FAILED),
                            route("w", phase=Phase.WAITING)))
        assert decide(state, None).route.id == "vllm"  # no model: the default instance
        assert decide(state, "alias").route.id == "vllm"
        assert decide(state, "nope").action == "unknown"
        assert decide(state, "s").action == "start"
        assert decide(state, "f").action == "start"
        assert decide(state, "off").action == "stopped"
        assert decide(state, "w").action == "queue"
        assert decide(state, "chat", exclude={"vllm"}).action == "unreachable"
        state.held.add("vllm")
        assert decide(state, "chat").action == "queue"  # drained: new requests wait
        state.held.add("s")
        assert decide(state, "s").action == "queue"  # held and stopped (a swap under way): not started on demand
    asyncio.run(run())


# --- the queue ------------------------------------------------------------------------------------------------------
class NoStarts(Starter):
    def __init__(self, state):
        super().__init__(state, None)  # type: ignore[arg-type]
        self.asked: list[str] = []

    def start(self, instance_id):
        self.asked.append(instance_id)


def test_a_queued_request_leaves_as_soon_as_a_table_shows_its_instance_ready():
    async def run():
        state = State(table(route("vllm", "m", phase=Phase.STARTING)))
        waiting = asyncio.create_task(wait_for_route(state, NoStarts(state), "m"))
        await asyncio.sleep(0.01)
        assert state.load("vllm").queued == 1 and not waiting.done()
        loop = asyncio.get_running_loop()
        pushed = loop.time()
        state.apply(table(route("vllm", "m")))
        chosen = await waiting
        assert chosen.id == "vllm" and loop.time() - pushed < 0.05
        assert state.load("vllm").queued == 0
    asyncio.run(run())


def test_a_full_queue_and_an_expired_wait_are_503_with_retry_after():
    async def run():
        state = State(table(route("vllm", "m", phase=Phase.STARTING, max_queue=1, queue_timeout=0.2)))
        first = asyncio.create_task(wait_for_route(state, NoStarts(state), "m"))
        await asyncio.sleep(0.01)
        full = await wait_for_route(state, NoStarts(state), "m")
        assert full.status == 503 and "Retry-After" in full.headers
        assert json.loads(full.text)["error"]["code"] == "queue_full"
        expired = await first
        assert expired.status == 503 and json.loads(expired.text)["error"]["code"] == "queue_timeout"
        assert state.load("vllm").queued == 0
    asyncio.run(run())


def test_a_stopped_instance_is_started_on_demand_and_one_without_on_demand_is_refused():
    async def run():
        state = State(table(route("s", phase=Phase.STOPPED), route("off", phase=Phase.STOPPED, on_demand=False)))
        starter = NoStarts(state)
        waiting = asyncio.create_task(wait_for_route(state, starter, "s"))
        await asyncio.sleep(0.01)
        assert starter.asked == ["s"]
        state.apply(table(route("s", phase=Phase.STARTING), route("off", phase=Phase.STOPPED, on_demand=False)))
        await asyncio.sleep(0.01)
        state.apply(table(route("s"), route("off", phase=Phase.STOPPED, on_demand=False)))
        assert (await waiting).id == "s"
        refused = await wait_for_route(state, starter, "off")
        body = json.loads(refused.text)["error"]
        assert refused.status == 503 and body["code"] == "model_stopped"
        assert "/api/instances/off/start" in body["message"]
    asyncio.run(run())


def test_unknown_model_is_404_naming_the_models():
    async def run():
        state = State(table(route("vllm", "acme/chat", "chat")))
        answer = await wait_for_route(state, NoStarts(state), "gpt-4")
        error = json.loads(answer.text)["error"]
        assert answer.status == 404 and error["code"] == "model_not_found" and error["type"] == "NotFoundError"
        assert "acme/chat" in error["message"] and "chat" in error["message"] and "gpt-4" in error["message"]
    asyncio.run(run())


@pytest.mark.parametrize(("raw", "expected"), [
    ("/instances/coder/v1/chat/completions?x=1", ("coder", "/v1/chat/completions?x=1")),
    ("/instances/coder", ("coder", "/")), ("/instances/coder?x", ("coder", "/?x")), ("/instances/", ("", "/")),
    ("/v1/models", None), ("/instancesx/coder/v1", None)])
def test_a_per_instance_path_names_the_instance_and_the_engine_path(raw, expected):
    assert per_instance(raw) == expected


def test_a_per_instance_request_goes_to_that_instance_by_id_whatever_its_names():
    async def run():
        state = State(table(route("vllm", "m", port=18001), route("coder", "m", port=18002),
                            route("coder_green", "m2", port=18003, phase=Phase.STARTING),
                            route("s", phase=Phase.STOPPED), route("off", phase=Phase.STOPPED, on_demand=False)))
        for _ in range(3):  # never balanced to a replica with the same name
            assert decide(state, None, instance="coder").route.id == "coder"
        assert decide(state, "m", instance="vllm").route.id == "vllm"
        assert decide(state, None, instance="s").action == "start"
        assert decide(state, None, instance="off").action == "stopped"
        assert decide(state, None, instance="coder_green").action == "unknown"  # a swap's new engine is no instance
        state.held.add("coder")
        assert decide(state, None, instance="coder").action == "queue"  # drained: queued like any other request
        answer = await wait_for_route(state, NoStarts(state), None, instance="coder_green")
        error = json.loads(answer.text)["error"]
        assert answer.status == 404 and error["code"] == "instance_not_found"
        assert error["message"].endswith("Instances here: coder, off, s, vllm.")
    asyncio.run(run())


def test_a_drain_answers_when_the_last_request_in_flight_ends():
    async def run():
        state = State(table(route("vllm", "m")))
        state.begin(state.routes["vllm"])
        drain = asyncio.create_task(state.drain("vllm", 5))
        await asyncio.sleep(0.01)
        assert not drain.done() and decide(state, "m").action == "queue"
        state.end(state.routes["vllm"])
        assert await drain == 0
        assert await state.drain("vllm", 0.01) == 0
        state.release("vllm")
        assert decide(state, "m").action == "forward"
    asyncio.run(run())


def test_the_table_file_is_followed_when_it_changes(tmp_path):
    from app import routing_table
    from app.router.state import TableFile
    from app.settings import Settings

    settings = Settings(APPLIANCE_ROOT=str(tmp_path))
    settings.routing_table.parent.mkdir(parents=True)

    async def run():
        state, watched = State(), TableFile(settings)
        follower = asyncio.create_task(watched.follow(state, interval=0.01))
        routing_table.write(settings, table(route("vllm", "m", phase=Phase.STARTING)))
        waiting = asyncio.create_task(wait_for_route(state, NoStarts(state), "m"))
        await asyncio.sleep(0.05)
        assert state.table is not None and not waiting.done()  # read, and the request queued
        routing_table.write(settings, table(route("vllm", "m")))  # what a manager writes when its push is lost
        assert (await asyncio.wait_for(waiting, 2)).id == "vllm"
        follower.cancel()
    asyncio.run(run())


def test_the_control_socket_takes_instance_and_green_route_ids_only():
    from app.router.control import ROUTE_ID
    assert all(ROUTE_ID.fullmatch(i) for i in ("vllm", "coder-2", "vllm_green"))
    assert not any(ROUTE_ID.fullmatch(i) for i in ("../x", "VLLM", "a b", "_green", "x" * 40))
