"""The control socket (a unix socket, mode 0600, in the run folder): the manager's way to talk to the router.
The protocol is app/router_client.py's docstring."""
from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from app import validation
from app.routing_table import Table

from .state import State
from .stats import Stats

MAX_DRAIN = 86400.0


def app(state: State, stats: Stats) -> web.Application:
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
        return web.json_response(state.status())

    def instance_id(request: web.Request) -> str:
        try:
            return validation.instance_id(request.match_info["id"])
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    @routes.post("/drain/{id}")
    async def drain(request: web.Request) -> web.Response:
        try:
            timeout = min(max(float(request.query.get("timeout", "60")), 0.0), MAX_DRAIN)
        except ValueError:
            return web.json_response({"detail": "timeout must be a number of seconds"}, status=400)
        return web.json_response({"in_flight": await state.drain(instance_id(request), timeout)})

    @routes.post("/release/{id}")
    async def release(request: web.Request) -> web.Response:
        state.release(instance_id(request))
        return web.json_response({"held": False})

    @routes.get("/metrics")
    async def metrics(request: web.Request) -> web.Response:
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
