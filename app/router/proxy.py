"""The forwarder: every request on the API port that is not GET /v1/models.

The request body is read once (bounded: 413 above ROUTER_MAX_BODY_MB), its `model` looked up, and the request sent
as it came to the engine chosen for that name; the response is streamed back chunk by chunk as the engine writes it
(no buffering: SSE events pass at once). Hop-by-hop headers are not forwarded in either direction. A client that
goes away cancels the handler (handler_cancellation), which closes the engine's connection: the engine sees the
disconnect and stops generating. A replica that refuses the connection (nothing was sent) is skipped and the next
one tried.

A per-instance request, `/instances/<id>/<rest>`, goes to that instance by id, whatever its body says: the prefix is
stripped and `/<rest>` (query included) sent to the instance's current port, the body as sent (no `model` read, no
alias rewritten). It is counted, queued, held and started on demand like any other request for the instance.

A model only a peer lists (app/router/peers.py) goes to that peer, streamed the same way, with the peer's key in
place of the caller's Authorization and Cookie, and LOOP_HEADER added; a request carrying LOOP_HEADER never goes on
to a peer.
"""
from __future__ import annotations

import asyncio
import ssl
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from app.routing_table import Route

from . import errors, models
from .extract import model_of, with_model
from .peers import LOOP_HEADER, NOT_TO_PEERS, Peer, Peers
from .queueing import Starter, wait_for_route
from .state import State
from .stats import Stats

HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "proxy-connection"))
# The client sets these for the engine's connection; the body is read already, so no `Expect: 100-continue`.
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
LOOKUP_EVERY = 1.0  # seconds between two lookups of unknown names in the engines' lists
TAIL_CHUNKS = 3  # the response's last chunks kept for its `usage`
TAIL = 8192
WHOLE = 65536  # answers of known length up to this size are read whole, then sent (one write instead of two)
PER_INSTANCE = "/instances/"


def per_instance(raw_path: str) -> tuple[str, str] | None:
    """(instance id, the path the engine gets) of a per-instance request (`/instances/<id>/<rest>`), else None."""
    if not raw_path.startswith(PER_INSTANCE):
        return None
    tail = raw_path[len(PER_INSTANCE):]
    cut = min((i for i in (tail.find("/"), tail.find("?")) if i >= 0), default=len(tail))
    rest = tail[cut:]
    return tail[:cut], rest if rest.startswith("/") else "/" + rest


def forward_headers(headers, skip: frozenset[str]) -> CIMultiDict:
    """The headers less hop-by-hop ones, and less those the Connection header names."""
    named = {t.strip().lower() for t in headers.get("connection", "").split(",")} if "connection" in headers else ()
    out: CIMultiDict = CIMultiDict()
    for key, value in headers.items():
        lower = key.lower()
        if lower not in skip and lower not in named:
            out.add(key, value)
    return out


class Proxy:
    def __init__(self, state: State, stats: Stats, starter: Starter, session: aiohttp.ClientSession, max_body: int,
                 peers: Peers | None = None):
        self.state, self.stats, self.starter, self.session, self.max_body = state, stats, starter, session, max_body
        self.peers = peers
        self._looked_up = 0.0
        self._lookup: asyncio.Task | None = None

    async def lookup(self) -> None:
        """Ask the ready engines what they serve (LoRA adapters), at most once a second, shared by all requests."""
        if self._lookup is None or (self._lookup.done() and time.monotonic() - self._looked_up > LOOKUP_EVERY):
            self._looked_up = time.monotonic()
            self._lookup = asyncio.get_running_loop().create_task(models.engines(self.state, self.session))
        await asyncio.shield(self._lookup)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started, started_wall = time.perf_counter(), time.time()
        body = b""
        if request.body_exists:
            if (request.content_length or 0) > self.max_body:
                return errors.too_large(self.max_body)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return errors.too_large(self.max_body)
        target = per_instance(request.raw_path)
        instance, path = target if target else (None, request.raw_path)
        model = model_of(request.headers.get("content-type"), body) if instance is None else None
        headers = forward_headers(request.headers, NOT_FORWARDED)
        from_peer = LOOP_HEADER in request.headers  # the loop guard: never sent on to a peer
        peers = self.peers if instance is None and not from_peer else None
        refused: set[str] = set()
        while True:
            route = await wait_for_route(self.state, self.starter, model, frozenset(refused),
                                         self.lookup if instance is None else None, instance, peers)
            if isinstance(route, Peer):
                assert model is not None and peers is not None
                return await self.to_peers(request, route, peers, body, model, started, started_wall)
            if isinstance(route, web.Response):
                self.stats.record(model, None, request.path, route.status, started, started_wall, None,
                                  reason=route.get(errors.REASON))
                return route
            sent = body
            if model is not None and model != route.names[0] and model in route.names and model not in route.adapters:
                sent = with_model(request.headers.get("content-type"), body, route.names[0])  # an alias
            try:
                return await self.forward(request, route, path, headers, sent, model, started, started_wall)
            except aiohttp.ClientConnectorError:
                refused.add(route.id)  # nothing was sent: another replica may take it

    async def to_peers(self, request: web.Request, peer: Peer, peers: Peers, body: bytes, model: str,
                       started: float, started_wall: float) -> web.StreamResponse:
        """To the peer that lists the model, with the peer's key and none of the caller's credentials; a peer that
        refuses the connection drops out, and another one that lists the model is tried."""
        headers = forward_headers(request.headers, NOT_FORWARDED | NOT_TO_PEERS)
        tried: set[str] = set()
        while True:
            headers.update(peer.headers())  # replaces the previous peer's
            peer.in_flight += 1
            try:
                return await self.relay(request, URL(str(peer.url) + request.raw_path, encoded=True), headers, body,
                                        model, peer.label, f"The peer {peer.name}", started, started_wall, peer.ssl)
            except aiohttp.ClientConnectorError as exc:
                peers.down(peer, exc)
                tried.add(peer.name)
            finally:
                peer.in_flight -= 1
            next_peer = peers.choose(model, tried)
            if next_peer is None:
                response = errors.unavailable(f"The peer serving `{model}` ({peer.name}) refused the connection; "
                                              "try again shortly.", 10, "peer_unreachable")
                self.stats.record(model, peer.label, request.path, 503, started, started_wall, None,
                                  reason="peer_unreachable")
                return response
            peer = next_peer

    async def forward(self, request: web.Request, route: Route, path: str, headers: CIMultiDict, body: bytes,
                      model: str | None, started: float, started_wall: float) -> web.StreamResponse:
        self.state.begin(route)
        try:
            url = URL(f"http://127.0.0.1:{route.port}{path}", encoded=True)  # the path as sent (less /instances/<id>)
            what = f"The engine of instance `{route.id}`"
            return await self.relay(request, url, headers, body, model, route.id, what, started, started_wall)
        finally:
            self.state.end(route)

    async def relay(self, request: web.Request, url: URL, headers: CIMultiDict, body: bytes, model: str | None,
                    label: str, what: str, started: float, started_wall: float,
                    tls: ssl.SSLContext | bool = True) -> web.StreamResponse:
        """Send the request, stream the answer back; counted in the metrics and activity log as `label`."""
        status, ttft, tail, prepared = 502, None, b"", False
        try:
            async with self.session.request(request.method, url, headers=headers, data=body or None,
                                            allow_redirects=False, ssl=tls) as upstream:
                status = upstream.status
                length = upstream.content_length
                if length is not None and length <= WHOLE and "content-encoding" not in upstream.headers:
                    # a small answer of known length (not a stream): read, then sent with its headers in one go
                    data = await upstream.read()
                    ttft, tail = time.perf_counter() - started, data[-TAIL:]
                    return web.Response(body=data, status=status, reason=upstream.reason,
                                        headers=forward_headers(upstream.headers, HOP_BY_HOP | {"content-length"}))
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                              headers=forward_headers(upstream.headers, HOP_BY_HOP))
                if upstream.content_length is not None and "content-encoding" not in upstream.headers:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                prepared = True
                last: list[bytes] = []
                async for chunk in upstream.content.iter_any():
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    await response.write(chunk)
                    last.append(chunk)
                    if len(last) > TAIL_CHUNKS:
                        del last[0]
                await response.write_eof()
                tail = b"".join(last)
                return response
        except aiohttp.ClientConnectorError:
            status = 0
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away: leaving the `async with` closed the engine's connection
            raise
        except (aiohttp.ClientError, ConnectionError) as exc:
            if request.transport is None or request.transport.is_closing():
                status = 499
                raise
            if not prepared:
                status = 502
                return errors.bad_gateway(f"{what} failed: {exc.__class__.__name__}.")
            raise  # mid-stream: the client's connection is closed, as the engine's was
        finally:
            if status:
                self.stats.record(model, label, request.path, status, started, started_wall, ttft, tail)
