"""The launcher's first design (one engine, /v1/vllm) mapped onto the default instance `vllm`.

On the portal port only: there /v1/... reaches the manager; on the API port /v1/... is the engine's OpenAI API.
`vllm` is published on the API port, so a `--port` in `options` is accepted and left out (its engine listens on the
API port's internal port).
"""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.api import v2_state
from app.api.instances import error
from app.api.v2 import to_swap
from app.instance import DEFAULT_INSTANCE, OWNING, Phase, error_message, without_option
from app.manager import InstanceError

router = APIRouter()
PID_WAIT = 30.0  # seconds POST waits for the engine's pid (the engine need not be ready)


class SingleRequest(BaseModel):
    options: str = Field(description="`vllm serve` options; --model is required, --port is ignored")
    env_vars: dict[str, str] | None = None


def running(manager) -> bool:
    return DEFAULT_INSTANCE in manager.known() and manager.phase(DEFAULT_INSTANCE) in OWNING


def pid(manager) -> int | None:
    actor = manager.actors.get(DEFAULT_INSTANCE)
    return (actor.rt.pid or None) if actor and actor.shown_phase() in OWNING else None


@router.post("/v1/vllm")
async def create(request: Request, body: SingleRequest):
    """Start `vllm` with these options: 200 `{status: started, pid}`; 409 while it runs; 422 bad options."""
    manager = request.app.state.manager
    if running(manager):
        return error(409, "a vLLM instance is already running: DELETE /v1/vllm first")
    try:
        swap = to_swap(body.options, body.env_vars, None)
    except ValueError as exc:
        return error(422, error_message(exc))
    swap.args = without_option(swap.args, "--port")
    swap.port = None
    old = manager.actors[DEFAULT_INSTANCE].rt.pid if DEFAULT_INSTANCE in manager.actors else 0
    try:
        await manager.swap(DEFAULT_INSTANCE, swap)
    except InstanceError as exc:
        return error(exc.status, exc.message)
    await v2_state.get(request.app).sync()
    deadline = time.monotonic() + PID_WAIT
    while pid(manager) in (None, old) and manager.phase(DEFAULT_INSTANCE) != Phase.FAILED \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return {"status": "started", "pid": pid(manager) if pid(manager) != old else None}


@router.get("/v1/vllm")
def status(request: Request):
    """`{status: started | stopped, pid}` of `vllm`."""
    manager = request.app.state.manager
    return {"status": "started" if running(manager) else "stopped", "pid": pid(manager)}


@router.delete("/v1/vllm")
async def delete(request: Request):
    """Stop `vllm` (its config stays, as the launcher's process object did): 200 `{status: terminated, pid}`; 404
    if it does not run."""
    manager = request.app.state.manager
    if not running(manager):
        return error(404, "no running vLLM process found")
    before = pid(manager)
    try:
        await manager.stop(DEFAULT_INSTANCE)
    except InstanceError as exc:
        return error(exc.status, exc.message)
    await v2_state.get(request.app).sync()
    return {"status": "terminated", "pid": before}
