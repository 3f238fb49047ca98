"""Peers in the router without an appliance: ROUTER_PEERS parsed, local against peer, the loop guard, and the
headers a peer gets (the router's API app and a recording peer, both in this process on loopback)."""
from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from app.boot import router_environment
from app.instance import Phase
from app.router.peers import LOOP_HEADER, Peer, Peers, parse, parse_entry
from app.router.queueing import Starter, wait_for_route
from app.router.server import api_app, session
from app.router.state import State
from app.router.stats import Stats
from app.routing_table import Route, Table
from app.settings import Settings

KEY = "peer-key-0123456789abcdef"
OTHER = "other-key-0123456789abcdef"


def table(*routes: Route) -> Table:
    return Table(manager_port=1, routes=list(routes))


# --- ROUTER_PEERS ---------------------------------------------------------------------------------------------------
def test_peers_are_parsed_with_their_tls_options():
    peers, problems = parse(f"https://10.0.0.2:8000={KEY}, http://box-c:9000={OTHER} ,"
                            f"https://10.0.0.4:8000={KEY};ca=/etc/peers/d.pem,https://10.0.0.5={KEY};insecure")
    assert problems == []
    assert [(p.name, p.ca, p.insecure) for p in peers] == [
        ("10.0.0.2:8000", None, False), ("box-c:9000", None, False), ("10.0.0.4:8000", "/etc/peers/d.pem", False),
        ("10.0.0.5:443", None, True)]
    assert peers[0].headers() == {"Authorization": f"Bearer {KEY}", LOOP_HEADER: "1"}
    assert KEY not in repr(peers[0])  # a key never reaches a log line through a repr


@pytest.mark.parametrize("entry,reason", [
    ("https://10.0.0.2:8000", "must be URL=KEY"),
    (f"ftp://10.0.0.2={KEY}", "must be http(s)://HOST:PORT"),
    (f"https://10.0.0.2:8000/v1={KEY}", "without a path"),
    (f"https://user@10.0.0.2:8000={KEY}", "without a path, query or user"),
    ("https://10.0.0.2:8000=short", "its key must be 16-256"),
    (f"https://10.0.0.2:8000={KEY};verify=no", "unknown option"),
    (f"http://10.0.0.2:8000={KEY};insecure", "unknown option"),
    (f"https://10.0.0.2:8000={KEY};ca=/x.pem;insecure", "exclude each other"),
])
def test_a_bad_entry_is_left_out_with_its_reason_and_never_its_key(entry, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_entry(entry)
    peers, problems = parse(f"{entry},https://10.0.0.9:8000={OTHER}")
    assert [p.name for p in peers] == ["10.0.0.9:8000"]  # the good entry stays
    assert len(problems) == 1 and problems[0].startswith("ROUTER_PEERS entry 1 is left out") and KEY not in problems[0]


def test_the_same_peer_twice_and_a_missing_ca_file_are_left_out_and_logged(tmp_path):
    _, problems = parse(f"https://a:1={KEY},https://a:1={OTHER}")
    assert problems == ["ROUTER_PEERS entry 2 is left out: https://a:1 is listed already"]
    lines: list[str] = []
    peers = Peers.from_setting(f"https://a:1={KEY};ca={tmp_path}/none.pem,https://b:2={OTHER};insecure,"
                               f"http://c:3={KEY}", None, lines.append)  # type: ignore[arg-type]
    assert [p.name for p in peers.peers] == ["b:2", "c:3"] and peers.peers[0].ssl is False
    text = "\n".join(lines)
    assert "ERROR: ROUTER_PEERS: peer a:1 is left out: its CA file" in text and "none.pem" in text
    assert "TLS verification is off" in text and "plain http" in text and KEY not in text and OTHER not in text


def test_the_boot_hands_the_router_a_value_supervisor_can_carry():
    assert router_environment(Settings(ROUTER_PEERS=f" https://a:1={KEY} ; ca=/c.pem , http://b:2={OTHER} ")) == \
        {"ROUTER_PEERS": f"https://a:1={KEY};ca=/c.pem,http://b:2={OTHER}"}
    assert router_environment(Settings(ROUTER_PEERS="")) == {}
    assert router_environment(Settings(ROUTER_PEERS="'https://a:1=\"x")) == {}  # logged; the boot goes on


# --- local against peer -----------------------------------------------------------------------------------------------
def peer_serving(*names: str, name: str = "b:8000") -> Peer:
    host, port = name.split(":")
    peer = parse_entry(f"https://{host}:{port}={KEY}")
    peer.models = [{"id": n, "object": "model", "state": "ready"} for n in names]
    return peer


def test_local_instances_win_and_a_name_only_a_peer_lists_goes_there():
    async def run():
        state = State(table(Route(id="vllm", names=["acme/chat", "chat"], port=1, phase=Phase.STOPPED,
                                  on_demand=False)))
        peers = Peers([peer_serving("acme/chat", "acme/far"), peer_serving("acme/far", name="c:8000")], None,
                      print)  # type: ignore[arg-type]
        starter = Starter(state, None)  # type: ignore[arg-type]
        local = await wait_for_route(state, starter, "acme/chat", peers=peers)  # stopped here: still not the peer's
        assert isinstance(local, web.Response) and local.status == 503
        far = await wait_for_route(state, starter, "acme/far", peers=peers)
        assert isinstance(far, Peer) and far.name == "b:8000"
        peers.peers[0].in_flight = 1  # the less busy peer that lists it
        assert (await wait_for_route(state, starter, "acme/far", peers=peers)).name == "c:8000"
        unknown = await wait_for_route(state, starter, "acme/none", peers=peers)
        assert unknown.status == 404 and "acme/far" in json.loads(unknown.text)["error"]["message"]
        # a request from a peer (peers=None): never on to a peer
        assert (await wait_for_route(state, starter, "acme/far", peers=None)).status == 404
        entries = peers.entries({"acme/chat", "chat"})
        assert entries == [{"id": "acme/far", "object": "model", "state": "ready", "instance": "peer:b:8000",
                            "peer": "b:8000"}]
    asyncio.run(run())


# --- the router and a recording peer ---------------------------------------------------------------------------------
async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def test_a_peer_gets_its_key_never_the_callers_and_a_peers_request_goes_no_further():
    seen: list[dict] = []

    async def peer_models(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"object": "list", "data": [{"id": "acme/far", "object": "model"},
                                                             {"id": "acme/chat", "object": "model"}]})

    async def peer_chat(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(f"data: {{\"n\": {i}, \"model\": \"acme/far\"}}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def run():
        remote = web.Application()
        remote.router.add_get("/v1/models", peer_models)
        remote.router.add_post("/v1/chat/completions", peer_chat)
        remote_runner, remote_port = await serve(remote)
        lines: list[str] = []
        async with session() as client:
            peers = Peers.from_setting(f"http://127.0.0.1:{remote_port}={KEY},http://127.0.0.1:9={OTHER}", client,
                                       lines.append)
            await asyncio.gather(*(peers.read(p) for p in peers.peers))
            await peers.read(peers.peers[1])  # still down: its error is logged once
            state = State(table(Route(id="vllm", names=["acme/chat"], port=9, phase=Phase.STOPPED, on_demand=False)))
            stats = Stats(state)
            runner, port = await serve(api_app(state, stats, client, 1 << 20, peers))
            base = f"http://127.0.0.1:{port}"
            caller = {"Authorization": "Bearer the-callers-own-token-000", "Cookie": "session=abc; other=1",
                      "X-Forwarded-For": "203.0.113.9"}
            try:
                async with client.get(f"{base}/v1/models", headers=caller) as answer:
                    listed = (await answer.json())["data"]
                async with client.get(f"{base}/v1/models", headers={LOOP_HEADER: "1"}) as answer:
                    from_a_peer = (await answer.json())["data"]
                body = {"model": "acme/far", "stream": True, "messages": []}
                async with client.post(f"{base}/v1/chat/completions", json=body, headers=caller) as answer:
                    streamed = (answer.status, await answer.text())
                async with client.post(f"{base}/v1/chat/completions", json=body, headers={LOOP_HEADER: "1"}) as a:
                    looped = (a.status, await a.json())
            finally:
                await runner.cleanup()
                await remote_runner.cleanup()
        return lines, listed, from_a_peer, streamed, looped, stats.recent(10)

    lines, listed, from_a_peer, streamed, looped, activity = asyncio.run(run())
    assert [m["id"] for m in listed] == ["acme/chat", "acme/far"]  # local first; the peer's `acme/chat` loses
    assert "peer" not in listed[0] and listed[1]["peer"].startswith("127.0.0.1:")
    assert listed[1]["instance"] == f"peer:{listed[1]['peer']}"
    assert [m["id"] for m in from_a_peer] == ["acme/chat"]  # the loop guard: a peer sees local models only
    assert streamed[0] == 200 and streamed[1].count("data: ") == 4 and '"model": "acme/far"' in streamed[1]
    to_peer = seen[-1]
    assert to_peer["Authorization"] == f"Bearer {KEY}" and to_peer[LOOP_HEADER] == "1"
    assert "Cookie" not in to_peer and "X-Forwarded-For" not in to_peer
    assert all("the-callers-own-token" not in json.dumps(h) for h in seen)
    assert looped[0] == 404 and looped[1]["error"]["code"] == "model_not_found"
    assert activity[1]["instance"].startswith("peer:127.0.0.1:") and activity[1]["status"] == 200
    down = [line for line in lines if "127.0.0.1:9 is left out until it answers" in line]
    assert len(down) == 1 and KEY not in "\n".join(lines) and OTHER not in "\n".join(lines)


def test_a_client_that_goes_away_ends_the_peers_request():
    async def run():
        ended = asyncio.Event()

        async def models_(request: web.Request) -> web.Response:
            return web.json_response({"data": [{"id": "acme/slow", "object": "model"}]})

        async def slow(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            try:
                for i in range(600):
                    await response.write(f"data: {i}\n\n".encode())
                    await asyncio.sleep(0.05)
            finally:
                ended.set()  # cancelled when the router closed the connection
            return response

        remote = web.Application()
        remote.router.add_get("/v1/models", models_)
        remote.router.add_post("/v1/completions", slow)
        remote_runner, remote_port = await serve(remote)
        async with session() as client:
            peers = Peers.from_setting(f"http://127.0.0.1:{remote_port}={KEY}", client, lambda line: None)
            await peers.read(peers.peers[0])
            state = State(table())
            stats = Stats(state)
            runner, port = await serve(api_app(state, stats, client, 1 << 20, peers))
            try:
                async with client.post(f"http://127.0.0.1:{port}/v1/completions",
                                       json={"model": "acme/slow", "stream": True}) as answer:
                    assert answer.status == 200
                    await answer.content.readline()
                # leaving the `async with` closed the client's connection mid-stream
                await asyncio.wait_for(ended.wait(), 10)
                await asyncio.sleep(0.1)
                return stats.recent(1), peers.peers[0].in_flight
            finally:
                await runner.cleanup()
                await remote_runner.cleanup()

    (last,), in_flight = asyncio.run(run())
    assert last["status"] == 499 and last["instance"].startswith("peer:") and in_flight == 0
