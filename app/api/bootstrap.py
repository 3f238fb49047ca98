"""vllm-bootstrap's REST control plane at the root of the API port, so its published client works unchanged.

A launch is one of our instances (visible in /api/instances and the portal), made through the manager like any
other, with the same validation and GPU ownership (409 when a GPU is owned). What vllm-bootstrap knows and we do
not (the task, when it was made, that a stop was asked for) is kept beside the saved state in launches.json.
A stop answers at once with `stopping`: the engine is stopped, its log kept for GET /logs, then the instance is
deleted (its port and GPUs freed) in the background.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app import gpu, stats
from app.files import write_atomic
from app.instance import InstanceRequest, Phase, error_message
from app.manager import InstanceError, Manager

router = APIRouter(tags=["vllm-bootstrap"])
LOG_CHUNK = 1024 * 1024  # at most this many bytes of log per GET /logs
KEPT = 200  # stopped and failed launches remembered (with their logs); older ones are forgotten
STOP_ANSWER = 3.0  # seconds POST /stop waits for the stop before it answers `stopping`
OPTION = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# `task` as the installed vLLM (0.10 and later) takes it: `--task` is gone; `generate` is its default runner.
TASK_ARGS = {"generate": [], "embed": ["--runner", "pooling", "--convert", "embed"]}
STATES = {Phase.WAITING: "bootstrapping", Phase.STARTING: "bootstrapping", Phase.READY: "ready",
          Phase.STOPPING: "stopping", Phase.FAILED: "failed", Phase.SLEEPING: "stopped"}
_stopping: dict[str, asyncio.Task] = {}


class LaunchBody(BaseModel):
    """POST /launch, as vllm-bootstrap's client sends it."""
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    task: Literal["generate", "embed"] = "generate"
    gpu_ids: list[int] | None = Field(None, description="GPU indices; all GPUs if left out")
    extra_kwargs: dict[str, Any] | None = Field(
        None, description="`vllm serve` options by name (max_model_len=2048 -> --max-model-len 2048; true: a flag)")


def options(extra: dict[str, Any] | None) -> list[str]:
    """extra_kwargs as `vllm serve` arguments (ValueError: a name that is not an option name)."""
    args: list[str] = []
    for name, value in (extra or {}).items():
        if not OPTION.fullmatch(name):
            raise ValueError(f"extra_kwargs: {name[:80]!r} is not a vllm serve option name (like max_model_len)")
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue  # vLLM's default
        if value is True:
            args.append(flag)
        else:
            args += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return args


# --- what vllm-bootstrap knows of a launch ----------------------------------------------------------------------
def _path(manager: Manager) -> Path:
    return manager.settings.state_dir / "launches.json"


def records(manager: Manager) -> dict[str, dict]:
    try:
        return json.loads(_path(manager).read_text())
    except (OSError, ValueError):
        return {}


def save(manager: Manager, launch_id: str, **fields) -> None:
    saved = records(manager)
    saved[launch_id] = {**saved.get(launch_id, {}), **fields, "updated_at": time.time()}
    known = manager.known()
    ended = sorted((r["updated_at"], i) for i, r in saved.items() if i not in known)
    for _, old in ended[:max(0, len(ended) - KEPT)]:
        del saved[old]
        archived_log(manager, old).unlink(missing_ok=True)
    write_atomic(_path(manager), json.dumps(saved) + "\n", mode=0o600)


def archived_log(manager: Manager, launch_id: str) -> Path:
    return manager.settings.state_dir / "launch-logs" / f"{launch_id}.log"


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def state(manager: Manager, launch_id: str, record: dict) -> tuple[str, str | None]:
    """Their state and error, from our phase (or, once the instance is deleted, from what was recorded)."""
    if launch_id not in manager.known():
        return ("failed", record.get("error")) if record.get("error") else ("stopped", None)
    phase = manager.phase(launch_id)
    if record.get("stop"):
        return "stopping", None
    if phase == Phase.STOPPED:
        return "stopped", None
    if phase != Phase.FAILED:
        return STATES[phase], None
    shown = manager.view(manager.get(launch_id))
    last = [line.strip() for line in shown.get("last_log") or [] if line.strip()]
    return "failed", "; ".join([shown.get("reason") or "the engine failed", *(["log: " + last[-1]] if last else [])])


def view(manager: Manager, launch_id: str, record: dict) -> dict:
    current, why = state(manager, launch_id, record)
    return {"launch_id": launch_id, "model": record["model"], "task": record["task"], "gpu_ids": record["gpu_ids"],
            "state": current, "error": why, "created_at": iso(record["created_at"]),
            "updated_at": iso(record["updated_at"])}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def find(manager: Manager, launch_id: str) -> dict:
    record = records(manager).get(launch_id)
    if record is None:
        raise InstanceError(404, f"no launch {launch_id[:80]!r}")
    return record


# --- routes ---------------------------------------------------------------------------------------------------
@router.post("/launch", status_code=201)
async def launch(request: Request, body: LaunchBody):
    """Start an engine; answers at once with `bootstrapping` (poll GET /status/{launch_id})."""
    manager: Manager = request.app.state.manager
    try:
        args = TASK_ARGS[body.task] + options(body.extra_kwargs)
    except ValueError as exc:
        return error(422, str(exc))
    launch_id = f"launch-{secrets.token_hex(6)}"
    try:
        await manager.swap(launch_id, InstanceRequest(model=body.model, args=args, gpus=body.gpu_ids, rollback=False),
                           make_room=False)
    except InstanceError as exc:
        return error(exc.status, exc.message)
    except ValueError as exc:  # InstanceRequest's own checks (args)
        return error(422, error_message(exc))
    gpu_ids = body.gpu_ids if body.gpu_ids is not None else list(range(manager.fx.gpu_count()))
    now = time.time()
    save(manager, launch_id, model=body.model, task=body.task, gpu_ids=gpu_ids, created_at=now)
    return JSONResponse(view(manager, launch_id, records(manager)[launch_id]), status_code=201)


@router.get("/launch")
def list_launches(request: Request) -> list[dict]:
    """The launches not yet stopped or failed."""
    manager: Manager = request.app.state.manager
    shown = [view(manager, i, r) for i, r in records(manager).items()]
    return [v for v in shown if v["state"] not in ("stopped", "failed")]


@router.get("/status/{launch_id}")
def status(request: Request, launch_id: str):
    manager: Manager = request.app.state.manager
    try:
        return view(manager, launch_id, find(manager, launch_id))
    except InstanceError as exc:
        return error(exc.status, exc.message)


async def _stop(manager: Manager, launch_id: str) -> None:
    """Stop the engine, keep its log, delete the instance; a failure is recorded as the launch's error."""
    try:
        if launch_id in manager.known():
            await manager.stop(launch_id)
            log = manager.settings.log_dir / f"{launch_id}.log"
            if log.exists():
                archived_log(manager, launch_id).parent.mkdir(exist_ok=True)
                shutil.copyfile(log, archived_log(manager, launch_id))
            await manager.delete(launch_id)
        save(manager, launch_id, stop=False)
    except Exception as exc:  # noqa: BLE001 (recorded for GET /status; the request that asked has answered)
        save(manager, launch_id, stop=False, error=f"stop failed: {manager.fx.explain(exc)}")
    finally:
        _stopping.pop(launch_id, None)


@router.post("/stop/{launch_id}")
async def stop(request: Request, launch_id: str):
    """Stop a launch: `stopped` within a few seconds, else `stopping` while the engine ends. A launch already
    stopped or failed is answered as it is."""
    manager: Manager = request.app.state.manager
    try:
        record = find(manager, launch_id)
    except InstanceError as exc:
        return error(exc.status, exc.message)
    if launch_id in manager.known() and launch_id not in _stopping:
        if manager.phase(launch_id) == Phase.FAILED:
            save(manager, launch_id, error=state(manager, launch_id, record)[1])
        save(manager, launch_id, stop=True)
        _stopping[launch_id] = asyncio.create_task(_stop(manager, launch_id))
    task = _stopping.get(launch_id)
    if task:
        await asyncio.wait([task], timeout=STOP_ANSWER)
    return view(manager, launch_id, records(manager)[launch_id])


@router.get("/logs/{launch_id}")
def logs(request: Request, launch_id: str, offset: int = Query(0, ge=0)):
    """The launch's log from byte `offset` (clamped to its size), at most 1 MiB; read on from `next_offset`."""
    manager: Manager = request.app.state.manager
    try:
        find(manager, launch_id)
    except InstanceError as exc:
        return error(exc.status, exc.message)
    live = manager.settings.log_dir / f"{launch_id}.log"
    path = live if live.exists() else archived_log(manager, launch_id)
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            start = min(offset, size)
            file.seek(start)
            chunk = file.read(LOG_CHUNK)
    except FileNotFoundError:
        start, chunk = 0, b""
    return {"launch_id": launch_id, "offset": start, "next_offset": start + len(chunk),
            "content": chunk.decode("utf-8", errors="replace")}


@router.get("/stats")
def system_stats(request: Request) -> dict:
    """Host load and memory, and each GPU's reading, in vllm-bootstrap's shape."""
    sampler = request.app.state.sampler
    load = os.getloadavg()
    memory = stats.memory()
    gpus = [{"gpu_id": g["index"], "uuid": g["uuid"] or None, "name": g["name"] or "unknown",
             "utilization_percent": g["utilization"],
             "memory_total_mib": _mib(g["memory_total"]), "memory_used_mib": _mib(g["memory_used"]),
             "memory_free_mib": (_mib(g["memory_total"] - g["memory_used"])
                                 if g["memory_total"] is not None and g["memory_used"] is not None else None),
             "temperature_c": g["temperature"], "power_draw_watts": g["power_draw"],
             "power_limit_watts": g["power_limit"]} for g in sampler.latest]
    return {"collected_at": datetime.now(UTC).isoformat(), "load_avg_1m": load[0], "load_avg_5m": load[1],
            "load_avg_15m": load[2], "cpu_count": os.cpu_count(), "memory_total_bytes": memory["total"],
            "memory_available_bytes": memory["available"], "memory_used_bytes": memory["used"],
            "memory_utilization_percent": round(100 * memory["used"] / memory["total"], 1),
            "gpu_count": len(gpus), "gpus": gpus, "nvidia_smi_error": None if gpus else gpu.reason()}


def _mib(value: int | None) -> int | None:
    return None if value is None else value // (1024 * 1024)
