"""/api: instances (create, swap, start, stop, delete), stats and supervisor services."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import stats
from app.instance import InstanceRequest
from app.manager import InstanceError

router = APIRouter(prefix="/api")
PROTECTED = {"caddy", "manager", "logforward"}


def error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers or None)


async def call(coro, status: int = 200):
    try:
        return JSONResponse(await coro, status_code=status)
    except InstanceError as exc:
        return error(exc.status, exc.message)


@router.get("/instances")
def list_instances(request: Request) -> list[dict]:
    manager = request.app.state.manager
    return [manager.view(c) for c in manager.known().values()]


@router.get("/instances/{instance_id}")
def get_instance(request: Request, instance_id: str):
    manager = request.app.state.manager
    try:
        return manager.view(manager.get(instance_id))
    except InstanceError as exc:
        return error(exc.status, exc.message)


@router.put("/instances/{instance_id}", status_code=202,
            responses={200: {"description": "with wait=true: ready, rolled back or failed"}})
async def put_instance(request: Request, instance_id: str, body: InstanceRequest):
    """Create or swap. 202 while the engine starts; with `wait=true` the answer comes once it is ready or failed."""
    return await call(request.app.state.manager.swap(instance_id, body), 200 if body.wait else 202)


@router.post("/instances/{instance_id}/{action}")
async def act(request: Request, instance_id: str, action: str):
    manager = request.app.state.manager
    if action not in ("start", "stop", "restart"):
        return error(404, f"unknown action {action!r}: use start, stop or restart")
    return await call(getattr(manager, action)(instance_id))


@router.delete("/instances/{instance_id}")
async def delete_instance(request: Request, instance_id: str):
    return await call(request.app.state.manager.delete(instance_id))


@router.get("/stats")
def get_stats(request: Request) -> dict:
    manager = request.app.state.manager
    return stats.snapshot(request.app.state.settings.workspace, request.app.state.sampler, manager.engine_pids(),
                          manager.gpu_holders())


@router.get("/services")
async def services(request: Request) -> list[dict]:
    infos = (await request.app.state.manager.fx.processes()).values()
    return [{"name": p["name"], "state": p["statename"], "pid": p["pid"] or None,
             "uptime": p["now"] - p["start"] if p["statename"] == "RUNNING" else None,
             "description": p["description"], "stoppable": p["name"] not in PROTECTED} for p in infos]


@router.post("/services/{name}/{action}")
async def service_action(request: Request, name: str, action: str):
    manager = request.app.state.manager
    supervisor = manager.fx.supervisor
    if action not in ("start", "stop", "restart"):
        return error(404, f"unknown action {action!r}: use start, stop or restart")
    instance = next((i for i in manager.store.instances if manager.program_of(i) == name), None)
    if instance:  # an engine (`<id>`, or `<id>_b` after a blue/green swap): through the manager, so its state and
        return await call(getattr(manager, action)(instance))  # restart count stay right
    if await asyncio.to_thread(supervisor.info, name) is None:
        return error(404, f"no program {name!r}")
    if name in PROTECTED and action != "start":
        return error(409, f"{name} cannot be stopped or restarted from here: the portal depends on it")
    if action in ("stop", "restart"):
        await asyncio.to_thread(supervisor.stop, name)
    if action in ("start", "restart"):
        await asyncio.to_thread(supervisor.start, name)
    return await asyncio.to_thread(supervisor.info, name)
