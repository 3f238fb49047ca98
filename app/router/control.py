"""The control socket (a unix socket, mode 0600, in the run folder): the manager's way to talk to the router.
The protocol is app/router_client.py's docstring."""
from __future__ import annotations

import re
import time

from aiohttp import web
from pydantic import ValidationError

from app.routing_table import Table

from .fastpath import FastPath
from .runtime_api import HAProxyError
from .state import State
from .stats import Stats

MAX_DRAIN = 86400.0
ROUTE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,31}(?:_[a-z0-9]{1,16})?")


def app(state: State, stats: Stats, fast: FastPath | None = None) -> web.Application:
    """`fast`: HAProxy's fast path (its requests count in /status, /drain and /metrics too), None when it is off."""
    routes = web.RouteTableDef()

    @routes.put("/table")
    async def put_table(request: web.Request) -> web.Response:
        try:
            table = Table.model_validate_json(await request.read())
        except ValidationError as exc:
            return web.json_response({"detail": f"not a routing table: {exc.errors()[:3]}"}, status=400)
        state.apply(table)
        return web.json_response({"routes": len(table.routes)})

    @routes.get("/status")
    async def status(request: web.Request) -> web.Response:
        if fast is None:
            return web.json_response(state.status())
        await fast.read_counts()
        return web.json_response(fast.merge(state.status()))

    def instance_id(request: web.Request) -> str:
        """An instance id, or a route id the manager made from one (`<id>_green`: `_` never is in an instance id)."""
        value = request.match_info["id"]
        if not ROUTE_ID.fullmatch(value):
            raise web.HTTPBadRequest(text=f"{value[:80]!r} is not an instance or route id")
        return value

    @routes.post("/drain/{id}")
    async def drain(request: web.Request) -> web.Response:
        try:
            timeout = min(max(float(request.query.get("timeout", "60")), 0.0), MAX_DRAIN)
        except ValueError:
            return web.json_response({"detail": "timeout must be a number of seconds"}, status=400)
        held = instance_id(request)
        if fast is None:
            return web.json_response({"in_flight": await state.drain(held, timeout)})
        deadline = time.monotonic() + timeout
        state.hold(held)
        try:
            await fast.sync()  # its names leave HAProxy's map before anything is counted
        except HAProxyError as exc:
            fast.log(f"drain of {held}: HAProxy's map not updated ({exc}); its counts are still waited for")
        left = await state.drain(held, timeout)
        left += await fast.wait_idle(held, max(0.0, deadline - time.monotonic()))
        return web.json_response({"in_flight": left})

    @routes.post("/release/{id}")
    async def release(request: web.Request) -> web.Response:
        state.release(instance_id(request))
        return web.json_response({"held": False})

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
        if fast is not None:
            await fast.read_counts()
        return web.Response(body=stats.exposition(), content_type="text/plain", charset="utf-8")

    @routes.get("/activity")
    async def activity(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "200"))
        except ValueError:
            limit = 200
        return web.json_response({"requests": stats.recent(limit)})

    application = web.Application()
    application.add_routes(routes)
    return application
