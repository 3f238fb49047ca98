"""The llm-d multi-instance launcher's API, under /v2/vllm/instances, over the same instances as /api."""
from __future__ import annotations

import shlex
import uuid

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app import logs, validation
from app.api.instances import error, log_response
from app.engine import option_value
from app.instances import InstanceError, SwapRequest

router = APIRouter()


class LaunchRequest(BaseModel):
    options: str = Field(description="`vllm serve` options; --model is required")
    env_vars: dict[str, str] = Field(default_factory=dict)


def to_swap(body: LaunchRequest) -> SwapRequest:
    args = validation.split_args(body.options, "options")
    model = option_value(args, "--model")
    if not model:
        raise ValueError("options must include --model MODEL")
    port = option_value(args, "--port")
    rest, skip = [], False
    for arg in args:  # --model and --port become fields of their own
        if skip:
            skip = False
        elif arg in ("--model", "--port"):
            skip = True
        elif not arg.startswith(("--model=", "--port=")):
            rest.append(arg)
    return SwapRequest(model=model, args=rest, env=body.env_vars, port=int(port) if port else None)


def describe(manager, config) -> dict:
    view = manager.view(config)
    options = shlex.join(["--model", config.model, "--port", str(config.port), *config.args])
    return {"instance_id": config.id, "status": view["state"], "options": options, "env_vars": config.env,
            "model": config.model, "port": config.port, "restarts": view["restarts"], "reason": view["reason"]}


async def launch(request: Request, instance_id: str, body: LaunchRequest):
    manager = request.app.state.manager
    if instance_id in manager.configs():
        return error(409, f"instance {instance_id!r} already exists")
    try:
        swap = to_swap(body)
        await manager.swap(instance_id, swap)
    except ValueError as exc:
        return error(422, str(exc))
    except InstanceError as exc:
        return error(exc.status, exc.message)
    return JSONResponse({"status": "started", "instance_id": instance_id}, status_code=201)


@router.get("/health")
def health() -> dict:
    return {"status": "OK"}


@router.post("/v2/vllm/instances", status_code=201)
async def create(request: Request, body: LaunchRequest):
    return await launch(request, uuid.uuid4().hex, body)


@router.put("/v2/vllm/instances/{instance_id}", status_code=201)
async def create_named(request: Request, instance_id: str, body: LaunchRequest):
    try:
        validation.instance_id(instance_id)
    except ValueError as exc:
        return error(422, str(exc))
    return await launch(request, instance_id, body)


@router.get("/v2/vllm/instances")
def list_all(request: Request, detail: bool = True):
    manager = request.app.state.manager
    configs = manager.configs()
    if not detail:
        return {"instance_ids": list(configs), "count": len(configs)}
    described = [describe(manager, c) for c in configs.values()]
    return {"total_instances": len(described), "running_instances": sum(d["status"] in ("starting", "ready")
                                                                        for d in described),
            "instances": described}


@router.get("/v2/vllm/instances/{instance_id}")
def get_one(request: Request, instance_id: str):
    manager = request.app.state.manager
    config = manager.configs().get(instance_id)
    return describe(manager, config) if config else error(404, f"instance {instance_id!r} not found")


@router.delete("/v2/vllm/instances/{instance_id}")
async def delete_one(request: Request, instance_id: str):
    try:
        await request.app.state.manager.delete(instance_id)
    except InstanceError as exc:
        return error(exc.status, exc.message)
    return {"status": "terminated", "instance_id": instance_id}


@router.delete("/v2/vllm/instances")
async def delete_all(request: Request):
    manager = request.app.state.manager
    stopped = []
    for instance_id in list(manager.configs()):
        await manager.delete(instance_id)
        stopped.append(instance_id)
    return {"status": "all_stopped", "stopped_instances": stopped, "total_stopped": len(stopped)}


@router.get("/v2/vllm/instances/{instance_id}/log")
def get_log(request: Request, instance_id: str, range: str | None = Header(None)):
    if instance_id not in request.app.state.manager.configs():
        return error(404, f"instance {instance_id!r} not found")
    path = logs.find(request.app.state.settings.log_dir, instance_id)
    if path is None:
        path = request.app.state.settings.log_dir / f"{instance_id}.log"
        path.touch()
    return log_response(path, range, None)
