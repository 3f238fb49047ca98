"""The llm-d multi-instance launcher's API, under /v2/vllm/instances, over the same instances as /api.

It follows the launcher as upstream has it now (docs/api.md names the commit): create answers the instance's
state (`status: running`, its `revision`, what was given), delete answers its last state (`status: stopped`),
lists carry the event counter's `revision`, and /watch streams the events (app/api/v2_state.py).
"""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from app import gpu, logs, portal, validation
from app.api import v2_state
from app.api.instances import error
from app.api.logs import log_response
from app.instance import InstanceRequest, error_message, option_value, without_option
from app.manager import InstanceError

router = APIRouter()
RESERVED = {"watch"}  # GET /v2/vllm/instances/watch is the event stream, not an instance
SERVICE = {
    "name": "Multi-Instance vLLM Management API",
    "version": "2.0",
    "endpoints": {
        "index": "GET /",
        "health": "GET /health",
        "create_instance": "POST /v2/vllm/instances",
        "create_named_instance": "PUT /v2/vllm/instances/{instance_id}",
        "delete_instance": "DELETE /v2/vllm/instances/{instance_id}",
        "delete_all_instances": "DELETE /v2/vllm/instances",
        "get_instance_status": "GET /v2/vllm/instances/{instance_id}",
        "get_all_instances": "GET /v2/vllm/instances",
        "get_instance_logs": "GET /v2/vllm/instances/{instance_id}/log",
        "watch_instances": "GET /v2/vllm/instances/watch",
    },
}


class LaunchRequest(BaseModel):
    options: str = Field(description="`vllm serve` options; --model is required")
    gpu_uuids: list[str] | None = Field(None, description="GPUs by NVML UUID; the engine sees them as its devices")
    env_vars: dict[str, str] | None = None
    annotations: dict[str, str] | None = Field(None, description="kept and echoed; no meaning to the appliance")


def gpu_indices(uuids: list[str]) -> list[int]:
    """NVML UUIDs -> GPU indices; ValueError naming an unknown one."""
    known = gpu.uuid_indices()
    for value in uuids:
        if value not in known:
            there = ", ".join(known) if known else f"none ({gpu.reason() or 'NVML found no GPU'})"
            raise ValueError(f"GPU UUID {value!r} not found; this machine's GPUs: {there}")
    return [known[value] for value in uuids]


def to_swap(options: str, env_vars: dict[str, str] | None, gpus: list[int] | None) -> InstanceRequest:
    """`options` -> a swap request: --model and --port become fields of their own, the rest are arguments."""
    args = validation.split_args(options, "options")
    model = option_value(args, "--model")
    if not model:
        raise ValueError("options must include --model MODEL")
    port = option_value(args, "--port")
    if port is not None and not port.isdigit():
        raise ValueError(f"--port {port!r} is not a port number")
    rest = without_option(without_option(args, "--model"), "--port")
    return InstanceRequest(model=model, args=rest, env=env_vars or {}, gpus=gpus,
                           port=int(port) if port else None)


def given(body: LaunchRequest, gpus: list[int] | None) -> v2_state.Given:
    """The body as it is echoed: with gpu_uuids, env_vars also carries their CUDA_VISIBLE_DEVICES (as upstream's)."""
    env = body.env_vars
    if gpus is not None:
        env = {**(env or {}), "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
    return v2_state.Given(options=body.options, gpu_uuids=body.gpu_uuids, env_vars=env, annotations=body.annotations)


async def launch(request: Request, name: str, body: LaunchRequest):
    manager, llmd = request.app.state.manager, v2_state.get(request.app)
    instance_id = v2_state.instance_id(name)
    try:
        gpus = gpu_indices(body.gpu_uuids) if body.gpu_uuids else None
    except ValueError as exc:
        return error(400, str(exc))
    try:
        swap = to_swap(body.options, body.env_vars, gpus)
    except ValueError as exc:
        return error(422, error_message(exc))
    async with llmd.lock:
        await llmd._sync()  # a deletion not seen yet is an event before this creation
        if instance_id in manager.known():
            return error(409, f"instance {name!r} already exists")
        try:
            await manager.swap(instance_id, swap, make_room=False)
        except InstanceError as exc:  # 422 bad input; 409 a port or GPU taken; 507 and others: not created
            status = exc.status if exc.status < 500 else 500
            return error(status, exc.message if status < 500 else f"failed to create the instance: {exc.message}")
        except Exception as exc:  # noqa: BLE001 (the contract's 500: the instance could not be created)
            return error(500, f"failed to create the instance: {exc!r}")
        config = manager.known()[instance_id]
        llmd.given(name, given(body, gpus), config)
        await llmd._sync()
        return JSONResponse(llmd.describe(config), status_code=201)


@router.get("/", include_in_schema=False)
def index(request: Request):
    """The launcher's service information for API clients; a browser asking for HTML gets the portal."""
    if "text/html" in request.headers.get("accept", ""):
        return portal.overview(request)
    return SERVICE


@router.get("/health")
def health() -> dict:
    return {"status": "OK"}


@router.get("/v2/vllm/instances/watch")
async def watch(request: Request, since: int | None = Query(None, description="resume after this revision")):
    """Instance events as NDJSON: `{"type": CREATED|STOPPED|DELETED, "object": {..., "revision": N}}` per line."""
    llmd = v2_state.get(request.app)
    if since is not None and since < llmd.oldest:
        return error(410, f"revision {since} is no longer available (the oldest is {llmd.oldest}): list the "
                          "instances and watch from the list's revision")
    return StreamingResponse(llmd.watch(since), media_type="application/x-ndjson",
                             headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


@router.post("/v2/vllm/instances", status_code=201)
async def create(request: Request, body: LaunchRequest):
    return await launch(request, uuid.uuid4().hex, body)


@router.put("/v2/vllm/instances/{instance_id}", status_code=201)
async def create_named(request: Request, instance_id: str, body: LaunchRequest):
    """Any id of URL-safe characters: one that is not valid as ours is the name of an instance `l<hash>`."""
    try:
        v2_state.name_check(instance_id)
    except ValueError as exc:
        return error(422, str(exc))
    if instance_id in RESERVED:
        return error(422, f"instance id {instance_id!r} is reserved: GET /v2/vllm/instances/{instance_id} is the "
                          "event stream")
    return await launch(request, instance_id, body)


@router.get("/v2/vllm/instances")
async def list_all(request: Request, detail: bool = True):
    manager, llmd = request.app.state.manager, v2_state.get(request.app)
    async with llmd.lock:
        await llmd._sync()
        configs = manager.known()
        if not detail:
            return {"revision": llmd.revision, "instance_ids": [llmd.name(i) for i in configs], "count": len(configs)}
        described = [llmd.describe(c) for c in configs.values()]
        return {"revision": llmd.revision, "total_instances": len(described),
                "running_instances": sum(d["status"] == "running" for d in described), "instances": described}


@router.get("/v2/vllm/instances/{instance_id}")
async def get_one(request: Request, instance_id: str):
    manager, llmd = request.app.state.manager, v2_state.get(request.app)
    await llmd.sync()
    config = manager.known().get(v2_state.instance_id(instance_id))
    return llmd.describe(config) if config else error(404, f"instance {instance_id!r} not found")


async def stop(request: Request, instance_id: str, name: str) -> dict:
    """Delete an instance; its last state (`status: stopped`, the DELETED event's revision). InstanceError 404."""
    manager, llmd = request.app.state.manager, v2_state.get(request.app)
    try:
        await manager.delete(instance_id)
    except InstanceError as exc:
        raise InstanceError(404, f"instance {name!r} not found") if exc.status == 404 else exc from None
    await llmd.sync()
    return llmd.forgotten_object(instance_id) or {"status": "stopped", "instance_id": name, "revision": llmd.revision}


@router.delete("/v2/vllm/instances/{instance_id}")
async def delete_one(request: Request, instance_id: str):
    """200 with the instance's last state, whether its engine ran or had exited already (its log goes too)."""
    try:
        return await stop(request, v2_state.instance_id(instance_id), instance_id)
    except InstanceError as exc:
        return error(exc.status, exc.message)


@router.delete("/v2/vllm/instances")
async def delete_all(request: Request):
    stopped, llmd = [], v2_state.get(request.app)
    for instance_id in list(request.app.state.manager.known()):
        try:
            stopped.append(await stop(request, instance_id, llmd.name(instance_id)))
        except InstanceError:  # deleted meanwhile by another request
            continue
    return {"status": "all_stopped", "stopped_instances": stopped, "total_stopped": len(stopped)}


@router.get("/v2/vllm/instances/{instance_id}/log")
def get_log(request: Request, instance_id: str, range: str | None = Header(None)):
    """Raw bytes of the engine's output: 200 (at most 1 MiB) or 206 with Range, both with Content-Range; 416 (empty
    body, `bytes */TOTAL`) for a start past the end, which an empty log without Range is too; 400; 404."""
    name, instance_id = instance_id, v2_state.instance_id(instance_id)
    if instance_id not in request.app.state.manager.known():
        return error(404, f"instance {name!r} not found")
    folder = request.app.state.settings.log_dir
    path = logs.find(folder, instance_id) or folder / f"{instance_id}.log"
    response = log_response(path, range or "bytes=0-", None, empty_416=True)
    if range is None and response.status_code == 206:  # no Range asked: 200, with the range it got
        return Response(response.body, status_code=200, media_type="application/octet-stream",
                        headers={k: v for k, v in response.headers.items() if k.lower() in (
                            "accept-ranges", "x-log-size", "content-range")})
    return response
