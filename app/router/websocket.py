"""WebSocket routes (vLLM's `/v1/realtime`): the upgrade is answered by the engine chosen, then every message is
relayed both ways until either side closes.

A WebSocket has no JSON body to read `model` from (vLLM's realtime protocol names the model in its first
`session.update` event, after the engine has spoken), so the engine is chosen by the `model` query parameter (as
OpenAI's Realtime API takes it: `/v1/realtime?model=NAME`), or by `/instances/<id>/...`; without either, the default
instance. The session counts as one request in flight for its whole length: an instance with an open session is
not idle, and a drain waits for it like for a stream. It queues and starts on demand like any other request; an
unknown model or a full queue gets the same OpenAI-style HTTP error as any request, and an engine that refuses the
upgrade 502 naming it, all before the upgrade. Sessions are not forwarded to peers.
"""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from aiohttp import web

from app.routing_table import Route

from . import errors
from .queueing import Starter, wait_for_route
from .state import State
from .stats import Stats

# The client's handshake headers the engine gets; aiohttp makes its own key, version and upgrade headers.
PASSED = ("authorization", "origin", "user-agent", "sec-websocket-extensions")


def is_upgrade(request: web.Request) -> bool:
    return request.headers.get("upgrade", "").lower() == "websocket"


async def relay(request: web.Request, target: tuple[str, str] | None, state: State, starter: Starter,
                session: aiohttp.ClientSession, stats: Stats) -> web.StreamResponse:
    started, started_wall = time.perf_counter(), time.time()
    instance, path = target if target else (None, request.raw_path)
    model = request.query.get("model") if instance is None else None
    route = await wait_for_route(state, starter, model, frozenset(), None, instance)  # no peers: local engines only
    if not isinstance(route, Route):  # the error answer (404, 503)
        assert isinstance(route, web.Response)  # without peers, never a Peer
        stats.record(model, None, request.path, route.status, started, started_wall, None,
                     reason=route.get(errors.REASON))
        return route
    state.begin(route)
    status = 101
    try:
        headers = {k: v for k, v in request.headers.items() if k.lower() in PASSED}
        protocols = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        try:
            upstream = await session.ws_connect(f"http://127.0.0.1:{route.port}{path}", headers=headers,
                                                protocols=protocols, autoping=False, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            status = 502
            return errors.bad_gateway(f"The engine of instance `{route.id}` refused the WebSocket at {path}: "
                                      f"{exc.status} {exc.message}")
        except aiohttp.ClientError as exc:
            status = 502
            return errors.bad_gateway(f"The engine of instance `{route.id}` did not answer: {exc!r}")
        async with upstream:
            client = web.WebSocketResponse(protocols=protocols, autoping=False, max_msg_size=0)
            await client.prepare(request)
            await both_ways(client, upstream, route.names[0] if model != route.names[0] and model in route.names
                            and model not in route.adapters else None)
            return client
    finally:
        state.end(route)
        stats.record(model, route.id, request.path, status, started, started_wall, None)


def served(text: str, name: str) -> str:
    """A client's `session.update` naming the model by an alias names it as the engine serves it."""
    if '"session.update"' not in text:
        return text
    try:
        event = json.loads(text)
    except ValueError:
        return text
    if not isinstance(event, dict) or event.get("type") != "session.update" or "model" not in event:
        return text
    return json.dumps({**event, "model": name})


async def both_ways(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
                    alias_of: str | None) -> None:
    """Each side's messages to the other, pings and pongs included, until one side closes (then the other is
    closed with the same code). `alias_of`: the served name, when the session was asked for by an alias."""
    async def pump(source, sink) -> None:
        async for message in source:
            if message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(served(message.data, alias_of) if alias_of and source is client else message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.PING:
                await sink.ping(message.data)
            elif message.type == aiohttp.WSMsgType.PONG:
                await sink.pong(message.data)
        await sink.close(code=source.close_code or aiohttp.WSCloseCode.OK)

    tasks = [asyncio.ensure_future(pump(client, upstream)), asyncio.ensure_future(pump(upstream, client))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
