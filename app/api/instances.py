"""/api: instances (create, swap, start, stop, delete), logs, stats and supervisor services."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from app import logs, stats
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


def log_response(path, range_header: str | None, offset: int | None, *, empty_416: bool = False) -> Response:
    """A log's bytes: all of it (at most 1 MiB, 200), or a Range / offset (206); a log not written yet is empty."""
    total = path.stat().st_size if path.exists() else 0
    if offset is not None:
        range_header = f"bytes={offset}-"
    try:
        start, end, partial = logs.byte_range(range_header, total)
    except logs.RangeError as exc:
        headers = {"Content-Range": f"bytes */{exc.total}"} if exc.status == 416 else {}
        if empty_416 and exc.status == 416:  # the llm-d contract: an empty body
            return Response(b"", status_code=416, headers=headers)
        return error(exc.status, exc.message, **headers)
    headers = {"Accept-Ranges": "bytes", "X-Log-Size": str(total)}
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
    return Response(logs.read(path, start, end), status_code=206 if partial else 200,
                    media_type="application/octet-stream", headers=headers)


@router.get("/instances/{instance_id}/logs")
def instance_logs(request: Request, instance_id: str, range: str | None = Header(None),
                  offset: int | None = Query(None, ge=0)):
    path = logs.find(request.app.state.settings.log_dir, instance_id)
    if instance_id not in request.app.state.manager.known():
        return error(404, f"no instance {instance_id!r}")
    return log_response(path or request.app.state.settings.log_dir / f"{instance_id}.log", range, offset)


@router.get("/logs")
def list_logs(request: Request) -> list[dict]:
    return logs.listing(request.app.state.settings.log_dir)


@router.get("/logs/{name}")
def get_log(request: Request, name: str, range: str | None = Header(None), offset: int | None = Query(None, ge=0)):
    path = logs.find(request.app.state.settings.log_dir, name)
    return log_response(path, range, offset) if path else error(404, f"no log {name!r}")


@router.get("/logs/{name}/download")
def download_log(request: Request, name: str):
    path = logs.find(request.app.state.settings.log_dir, name)
    return FileResponse(path, filename=path.name, media_type="text/plain") if path else error(404, f"no log {name!r}")


@router.get("/logs/{name}/stream")
def stream_log(request: Request, name: str, offset: int | None = Query(None, ge=0),
               last_event_id: str | None = Header(None)):
    """Live tail over SSE; each event's id is the byte offset after its line (resume with ?offset= or Last-Event-ID).

    Last-Event-ID wins: a browser's EventSource reconnects to the same URL, `?offset=` included, and sends the
    id of the last event it got, so the stream goes on from there instead of repeating lines."""
    path = logs.find(request.app.state.settings.log_dir, name)
    if path is None:
        return error(404, f"no log {name!r}")
    if last_event_id and last_event_id.isdigit():
        offset = int(last_event_id)
    return StreamingResponse(logs.follow(path, offset), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


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
    if name in manager.store.instances:  # an engine: through the manager, so its state and restart count stay right
        return await call(getattr(manager, action)(name))
    if await asyncio.to_thread(supervisor.info, name) is None:
        return error(404, f"no program {name!r}")
    if name in PROTECTED and action != "start":
        return error(409, f"{name} cannot be stopped or restarted from here: the portal depends on it")
    if action in ("stop", "restart"):
        await asyncio.to_thread(supervisor.stop, name)
    if action in ("start", "restart"):
        await asyncio.to_thread(supervisor.start, name)
    return await asyncio.to_thread(supervisor.info, name)
