"""/api/instances/{id}/lora: list, load and unload an instance's LoRA adapters at runtime.

The engine's own load/unload endpoints are called on its loopback port (app/lora.py); no public port reaches them.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app import lora
from app.api.instances import error
from app.engine import lora_enabled
from app.instance import Phase, error_message, lora_adapter
from app.manager import InstanceError

router = APIRouter(prefix="/api/instances/{instance_id}/lora", tags=["lora"])


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the adapter's name: what a request's `model` names")
    path: str = Field(description="a Hugging Face id or a local folder (absolute path) holding the adapter")


def _engine(request: Request, instance_id: str):
    """The instance's config, its engine's port and pid; InstanceError unless it is ready with LoRA on."""
    manager = request.app.state.manager
    config = manager.get(instance_id)
    if not lora_enabled(config):
        raise InstanceError(409, f"LoRA is off on instance {instance_id!r}: swap it with `lora` set ({{}} for none "
                                 "at start) to load adapters")
    phase = manager.phase(instance_id)
    if phase != Phase.READY:
        raise InstanceError(409, f"instance {instance_id!r} is {phase.value}: adapters are loaded into a ready engine")
    port = next((r.port for r in manager.table().routes if r.id == instance_id), config.port)
    actor = manager.actors.get(instance_id)
    return config, port, actor.rt.pid if actor else None


def _runtime(request: Request) -> lora.Runtime:
    return request.app.state.manager.lora


@router.get("")
async def list_adapters(request: Request, instance_id: str):
    """The instance's adapters: `static` ones (its `lora` field) and those loaded at runtime; `loaded` is what the
    engine lists now (false while it is not ready)."""
    manager = request.app.state.manager
    try:
        config = manager.get(instance_id)
    except InstanceError as exc:
        return error(exc.status, exc.message)
    static = dict(config.lora or {})
    engine: dict[str, str] = {}
    if lora_enabled(config) and manager.phase(instance_id) == Phase.READY:
        try:
            engine = await lora.listed(next((r.port for r in manager.table().routes if r.id == instance_id),
                                            config.port))
        except lora.EngineError:
            engine = {}
    adapters = [{"name": name, "path": path, "static": True, "loaded": name in engine} for name, path in
                static.items()]
    adapters += [{"name": name, "path": path, "static": False, "loaded": True} for name, path in engine.items()
                 if name not in static]
    return {"id": instance_id, "enabled": lora_enabled(config), "adapters": adapters}


@router.post("")
async def load_adapter(request: Request, instance_id: str, body: LoadRequest):
    """Load an adapter into the running engine (vLLM's /v1/load_lora_adapter); requests naming it are then routed
    to this instance. It lasts until the engine stops: put it in `lora` to have it at every start."""
    try:
        config, port, pid = _engine(request, instance_id)
        lora_adapter(body.name, body.path, taken=config.names)
    except InstanceError as exc:
        return error(exc.status, exc.message)
    except ValueError as exc:
        return error(422, error_message(exc))
    try:
        await lora.load(port, body.name, body.path)
    except lora.EngineError as exc:
        status = {400: 409, 404: 422, 500: 422}.get(exc.status, exc.status if exc.status < 500 else 502)
        return error(status, f"the engine did not load {body.name!r}: {exc.message}")
    _runtime(request).add(instance_id, pid, body.name, body.path)
    request.app.state.manager.publish()
    return JSONResponse({"id": instance_id, "name": body.name, "path": body.path, "loaded": True})


@router.delete("/{name}")
async def unload_adapter(request: Request, instance_id: str, name: str):
    """Unload an adapter (a static one comes back at the engine's next start)."""
    try:
        _config, port, pid = _engine(request, instance_id)
    except InstanceError as exc:
        return error(exc.status, exc.message)
    try:
        await lora.unload(port, name)
    except lora.EngineError as exc:
        status = {400: 422}.get(exc.status, exc.status if exc.status < 500 else 502)
        return error(status, f"the engine did not unload {name!r}: {exc.message}")
    _runtime(request).remove(instance_id, pid, name)
    request.app.state.manager.publish()
    return {"id": instance_id, "name": name, "loaded": False}
