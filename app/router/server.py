"""The router's two servers, wired: the API port (127.0.0.1:<vLLM API internal port>, behind Caddy; with the fast
path, a loopback port of its own behind HAProxy) and the control socket; the table file followed in the background,
and with the fast path, HAProxy's map kept and its log read (fastpath.py, fastlog.py)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import aiohttp
from aiohttp import web

from app.portal_config import Ports
from app.settings import Settings

from . import control, fastlog, models, websocket
from .fastpath import FastPath
from .peers import Peers
from .proxy import Proxy, per_instance
from .queueing import Starter
from .runtime_api import RuntimeAPI
from .state import State, TableFile
from .stats import Stats

UPSTREAM_IDLE = 2.0  # seconds an idle engine connection is kept: below uvicorn's 5 s keep-alive timeout


def log(message: str) -> None:
    print(f"router: {message}", file=sys.stderr, flush=True)


def session() -> aiohttp.ClientSession:
    """One pool of engine connections for every request: no limit on their number, kept briefly when idle."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_IDLE, use_dns_cache=False)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                 skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))


def api_app(state: State, stats: Stats, client: aiohttp.ClientSession, max_body: int,
            peers: Peers | None = None) -> web.Application:
    starter = Starter(state, client, stats.started_on_demand)
    proxy = Proxy(state, stats, starter, client, max_body, peers)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/v1/models":
            return await models.handle(request, state, client, peers)
        if websocket.is_upgrade(request):  # vLLM's /v1/realtime
            return await websocket.relay(request, per_instance(request.raw_path), state, starter, client, stats)
        return await proxy.handle(request)

    application = web.Application(client_max_size=max_body)
    application.router.add_route("*", "/{tail:.*}", handle)
    return application


async def serve(settings: Settings, port: int | None = None, fast_path: bool = False) -> None:
    """`port`: where to listen (None: the API's internal port); `fast_path`: HAProxy is in front (app/haproxy.py)."""
    port = Ports.read(settings.portal_yaml).api_port if port is None else port
    table_file = TableFile(settings)
    state = State(table_file.read_if_changed())
    if state.table is None:
        log(f"no routing table in {settings.routing_table} yet: requests wait for the manager to publish one")
    stats = Stats(state)
    async with session() as client:
        peers = Peers.from_setting(settings.router_peers, client, log) if settings.router_peers.strip() else None
        api = web.AppRunner(api_app(state, stats, client, settings.router_max_body_mb * 1024 * 1024, peers),
                            handler_cancellation=True, access_log=None, shutdown_timeout=5)
        fast = FastPath(state, RuntimeAPI(settings.haproxy_socket), settings.haproxy_map, log) if fast_path else None

        def outside() -> dict[str, int]:
            """In flight the router's own counts lack: HAProxy's (by instance) and each peer's (`peer:HOST:PORT`)."""
            counts = fast.by_instance() if fast is not None else {}
            return counts | {peer.label: peer.in_flight for peer in (peers.peers if peers else [])}
        stats.loads.outside = outside
        if fast is not None:
            fast_log = await fastlog.listen(settings.haproxy_log_socket, state, stats, fast.owners)
        ctl = web.AppRunner(control.app(state, stats, fast), access_log=None)
        await api.setup()
        await ctl.setup()
        socket_path = settings.router_socket
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        await web.UnixSite(ctl, str(socket_path)).start()
        os.chmod(socket_path, 0o600)
        await web.TCPSite(api, "127.0.0.1", port, backlog=2048, reuse_address=True).start()
        log(f"routing on 127.0.0.1:{port}; control socket {socket_path}"
            + ("; HAProxy's fast path in front (its map kept from here)" if fast else ""))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        follower = loop.create_task(table_file.follow(state))
        reader = loop.create_task(peers.follow(settings.router_peers_interval)) if peers and peers.peers else None
        keeper = loop.create_task(fast.follow()) if fast else None
        await stop.wait()
        follower.cancel()
        if keeper:
            keeper.cancel()
            fast_log.close()
        if reader:
            reader.cancel()
        await api.cleanup()
        await ctl.cleanup()
