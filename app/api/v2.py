"""The llm-d multi-instance launcher's API, under /v2/vllm/instances, over the same instances as /api."""
from __future__ import annotations

import shlex
import uuid

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app import logs, validation
from app.api.instances import error
from app.api.logs import log_response
from app.engine import option_value
from app.instances import OWNING_PHASES, InstanceError, SwapRequest, error_message

router = APIRouter()


class LaunchRequest(BaseModel):
    options: str = Field(description="`vllm serve` options; --model is required")
    env_vars: dict[str, str] = Field(default_factory=dict)


def to_swap(body: LaunchRequest) -> SwapRequest:
    """`options` -> a swap request: --model and --port become fields of their own, the rest are arguments."""
    args = validation.split_args(body.options, "options")
    model = option_value(args, "--model")
    if not model:
        raise ValueError("options must include --model MODEL")
    port = option_value(args, "--port")
    if port is not None and not port.isdigit():
        raise ValueError(f"--port {port!r} is not a port number")
    rest, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--model", "--port"):
            skip = True
        elif not arg.startswith(("--model=", "--port=")):
            rest.append(arg)
    return SwapRequest(model=model, args=rest, env=body.env_vars, port=int(port) if port else None)


def status(phase: str) -> str:
    """The launcher's two statuses: `running` while the engine process is up (starting or ready), else `stopped`."""
    return "running" if phase in OWNING_PHASES else "stopped"


def describe(manager, config) -> dict:
    view = manager.view(config)
    options = shlex.join(["--model", config.model, "--port", str(config.port), *config.args])
    return {"instance_id": config.id, "status": status(view["state"]), "state": view["state"],
            "ready": view["state"] == "ready", "options": options, "env_vars": config.env, "model": config.model,
            "port": config.port, "restarts": view["restarts"], "reason": view["reason"]}


async def launch(request: Request, instance_id: str, body: LaunchRequest):
    manager = request.app.state.manager
    if instance_id in manager.known():
        return error(409, f"instance {instance_id!r} already exists")
    try:
        await manager.swap(instance_id, to_swap(body))
    except ValueError as exc:
        return error(422, error_message(exc))
    except InstanceError as exc:  # 409: a port or GPU is taken; 507 and others: it could not be created
        return error(exc.status if exc.status < 500 else 500, f"failed to create the instance: {exc.message}")
    except Exception as exc:  # noqa: BLE001 (the contract's 500: the instance could not be created)
        return error(500, f"failed to create the instance: {exc!r}")
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
    configs = manager.known()
    if not detail:
        return {"instance_ids": list(configs), "count": len(configs)}
    described = [describe(manager, c) for c in configs.values()]
    return {"total_instances": len(described), "running_instances": sum(d["status"] == "running" for d in described),
            "instances": described}


@router.get("/v2/vllm/instances/{instance_id}")
def get_one(request: Request, instance_id: str):
    manager = request.app.state.manager
    config = manager.known().get(instance_id)
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
    for instance_id in list(manager.known()):
        try:
            await manager.delete(instance_id)
        except InstanceError:  # deleted meanwhile by another request
            continue
        stopped.append({"status": "terminated", "instance_id": instance_id})
    return {"status": "all_stopped", "stopped_instances": stopped, "total_stopped": len(stopped)}


@router.get("/v2/vllm/instances/{instance_id}/log")
def get_log(request: Request, instance_id: str, range: str | None = Header(None)):
    """Raw bytes of the engine's output: 200 (at most 1 MiB) or 206 with Range; 400, 404, 416 as the contract says."""
    if instance_id not in request.app.state.manager.known():
        return error(404, f"instance {instance_id!r} not found")
    path = logs.find(request.app.state.settings.log_dir, instance_id)
    return log_response(path or request.app.state.settings.log_dir / f"{instance_id}.log", range, None,
                        empty_416=True)
