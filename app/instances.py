"""Start, stop and swap engines: the manager's logic over the saved state, the renderer and supervisor.

A swap: validate -> save the state and write the program file (atomically) -> stop the old engine
(its whole process group; with NVML, wait until its GPU memory is released) -> start the new one
-> wait until /health answers and /v1/models lists the model. If the new engine exits or times
out, the previous program and model come back (rollback, on by default).

Requests on one instance are serialised by a lock; a request still queued when a newer one
arrives is skipped ("superseded"), so the last accepted request wins and none is half-applied.
Different instances proceed in parallel.
"""
from __future__ import annotations

import asyncio
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, Field

from app import engine, gpu, logs, portal_config, render, state
from app.settings import Settings
from app.supervisor import Supervisor

FAILED_STATES = {"EXITED", "FATAL", "BACKOFF"}


class InstanceError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class SwapRequest(BaseModel):
    """PUT /api/instances/{id}: create or swap."""
    model: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    gpus: list[int] | None = None
    share_gpus: bool = False
    served_model_name: str | None = None
    port: int | None = None
    wait: bool = False
    rollback: bool = True
    timeout: float = Field(1800, gt=0, le=86400, description="seconds to wait for the engine to be ready")


@dataclass
class Runtime:
    """What the manager knows beyond the saved config: phase, reason, restarts."""
    phase: str = "stopped"  # stopped, starting, ready, stopping, failed
    reason: str | None = None
    since: float = field(default_factory=time.time)
    restarts: int = 0
    pid: int = 0
    busy: bool = False  # an operation of the manager is in flight
    seq: int = 0  # the last accepted request

    def set(self, phase: str, reason: str | None = None) -> None:
        if phase != self.phase:
            self.since = time.time()
        self.phase, self.reason = phase, reason


class Manager:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.supervisor = Supervisor.of(settings)
        self.locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.runtime: dict[str, Runtime] = defaultdict(Runtime)
        self.tasks: set[asyncio.Task] = set()
        self.http = httpx.AsyncClient(timeout=2.0)

    # --- reading -------------------------------------------------------------
    def configs(self) -> dict[str, state.InstanceConfig]:
        return state.load(self.settings).instances

    def view(self, config: state.InstanceConfig) -> dict:
        rt = self.runtime[config.id]
        view = {**config.model_dump(), "served_model_name": config.name_served, "state": rt.phase,
                "reason": rt.reason, "since": rt.since, "restarts": rt.restarts, "pid": rt.pid or None,
                "uptime": round(time.time() - rt.since, 1) if rt.phase == "ready" else None,
                "command": engine.program(self.settings, config).argv}
        if rt.phase in ("starting", "failed"):
            view["last_log"] = logs.tail_lines(self.log_path(config.id), 20)
        return view

    def get(self, instance_id: str) -> state.InstanceConfig:
        config = self.configs().get(instance_id)
        if not config:
            raise InstanceError(404, f"no instance {instance_id!r}")
        return config

    def log_path(self, instance_id: str):
        return self.settings.log_dir / f"{instance_id}.log"

    # --- monitoring ----------------------------------------------------------
    async def monitor(self, interval: float = 1.0) -> None:
        """Follow supervisor: phase of each idle instance, and restarts (a new pid the manager did not cause)."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 (keep monitoring through a supervisor hiccup)
                print(f"manager: monitor: {exc!r}", flush=True)
            await asyncio.sleep(interval)

    async def refresh(self) -> None:
        infos = {p["name"]: p for p in await asyncio.to_thread(self.supervisor.all)}
        for config in self.configs().values():
            rt, info = self.runtime[config.id], infos.get(config.id)
            pid = info["pid"] if info else 0
            restarted = bool(pid and rt.pid and pid != rt.pid)
            if restarted and not rt.busy:
                rt.restarts += 1
            rt.pid = pid or rt.pid
            if rt.busy or not info:
                continue
            name = info["statename"]
            if name in ("RUNNING", "STARTING"):
                # Probe only until ready (and again after a restart), so a ready engine's log is not flooded.
                if rt.phase != "ready" or restarted:
                    rt.set("ready" if await self.healthy(config) else "starting")
            elif name in FAILED_STATES:
                rt.set("failed", rt.reason or f"the engine exited: {info.get('spawnerr') or info['description']}")
            elif name == "STOPPING":
                rt.set("stopping")
            elif rt.phase != "failed":
                rt.set("stopped")

    async def healthy(self, config: state.InstanceConfig) -> bool:
        base = f"http://127.0.0.1:{config.port}"
        try:
            if (await self.http.get(f"{base}/health")).status_code != 200:
                return False
            models = (await self.http.get(f"{base}/v1/models")).json()
            return any(m.get("id") == config.name_served for m in models.get("data", []))
        except (httpx.HTTPError, ValueError):
            return False

    # --- changing ------------------------------------------------------------
    def build(self, instance_id: str, request: SwapRequest) -> state.InstanceConfig:
        """Validate a request into a config (ValueError says what is wrong)."""
        saved = self.configs()
        port = request.port
        if instance_id == state.DEFAULT_INSTANCE:
            api = portal_config.find(portal_config.load(self.settings.portal_yaml)[1], "vLLM")
            port = api.internal_port if api else 18000
        elif port is None:
            port = saved[instance_id].port if instance_id in saved else self.free_port(saved)
        config = state.InstanceConfig(id=instance_id, model=request.model, args=request.args, env=request.env,
                                      gpus=request.gpus, share_gpus=request.share_gpus, port=port,
                                      served_model_name=request.served_model_name)
        render.environment_line(engine.environment(self.settings, config))  # what supervisor could not carry
        self.check_ownership(config, saved)
        return config

    def free_port(self, saved: dict[str, state.InstanceConfig]) -> int:
        used = {c.port for c in saved.values()}
        return next(p for p in range(18001, 19000) if p not in used)

    def check_ownership(self, config: state.InstanceConfig, saved: dict[str, state.InstanceConfig]) -> None:
        count = gpu.gpu_count()
        mine = set(config.gpus) if config.gpus is not None else set(range(count))
        for other in saved.values():
            if other.id == config.id or self.runtime[other.id].phase == "stopped":
                continue
            theirs = set(other.gpus) if other.gpus is not None else set(range(count))
            shared = mine & theirs
            if other.port == config.port:
                raise InstanceError(409, f"port {config.port} is used by instance {other.id!r}")
            if shared and not (config.share_gpus and other.share_gpus):
                raise InstanceError(409, f"GPU {min(shared)} is owned by instance {other.id!r} "
                                         "(set share_gpus on both to share it)")

    def accept(self, instance_id: str) -> int:
        rt = self.runtime[instance_id]
        rt.seq += 1
        return rt.seq

    async def swap(self, instance_id: str, request: SwapRequest) -> dict:
        try:
            config = self.build(instance_id, request)
        except ValueError as exc:
            raise InstanceError(422, _message(exc)) from None
        seq = self.accept(instance_id)
        job = asyncio.create_task(self._swap(config, request, seq))
        self.tasks.add(job)
        job.add_done_callback(self.tasks.discard)
        if request.wait:
            return await asyncio.shield(job)
        self.runtime[instance_id].set("starting")
        return {**self.view(config), "accepted": seq}

    async def _swap(self, config: state.InstanceConfig, request: SwapRequest, seq: int) -> dict:
        rt = self.runtime[config.id]
        async with self.locks[config.id]:
            if seq != rt.seq:
                return {**self.view(config), "result": "superseded by a later request"}
            old = self.configs().get(config.id)
            rt.busy = True
            rt.set("starting")
            try:
                await self._apply(config)
                ok, reason = await self._wait_ready(config, request.timeout)
                if ok:
                    rt.set("ready")
                    return {**self.view(config), "result": "ready"}
                last_log = logs.tail_lines(self.log_path(config.id), 20)
                if request.rollback and old and old != config:
                    await self._apply(old)
                    back, _ = await self._wait_ready(old, 600)
                    rt.set("ready" if back else "failed",
                           f"swap to {config.model} failed: {reason}; rolled back to {old.model}")
                    return {**self.view(old), "result": "rolled back", "error": reason, "failed_log": last_log}
                await asyncio.to_thread(self.supervisor.stop, config.id)
                rt.set("failed", reason)
                return {**self.view(config), "result": "failed", "error": reason}
            finally:
                rt.busy = False

    async def _apply(self, config: state.InstanceConfig) -> None:
        """Save the config, write its program, stop the old engine (GPU memory released), start the new one."""
        saved = state.load(self.settings)
        previous = saved.instances.get(config.id)
        saved.instances[config.id] = config
        try:
            state.save(self.settings, saved)
        except OSError as exc:
            raise InstanceError(507, f"cannot save the new configuration ({exc.strerror}); "
                                     "the previous configuration and model are untouched") from None
        render.write_program(self.settings, engine.program(self.settings, config, gpu_count=gpu.gpu_count()))
        owned_pids = await asyncio.to_thread(gpu.engine_pids, previous.gpus if previous else None)
        await asyncio.to_thread(self.supervisor.stop, config.id)
        await asyncio.to_thread(gpu.wait_released, owned_pids, 60.0)
        await asyncio.to_thread(self.supervisor.apply_config)
        await asyncio.to_thread(self.supervisor.start, config.id)
        if previous is None or previous.port != config.port:
            await self.reload_caddy()

    async def _wait_ready(self, config: state.InstanceConfig, timeout: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await asyncio.to_thread(self.supervisor.info, config.id)
            if info and info["statename"] in FAILED_STATES:
                return False, f"the engine exited ({info.get('spawnerr') or info['description']})"
            if info:
                self.runtime[config.id].pid = info["pid"] or self.runtime[config.id].pid
            if await self.healthy(config):
                return True, ""
            await asyncio.sleep(0.25)
        return False, f"not ready after {timeout:.0f} s"

    async def reload_caddy(self) -> None:
        """Re-render the per-instance routes and reload Caddy gracefully (open connections are kept)."""
        render.write_atomic(self.settings.caddy_routes_file,
                            render.caddy_routes(self.settings, self.configs().values()))
        done = await asyncio.to_thread(subprocess.run, [
            "caddy", "reload", "--config", str(self.settings.caddyfile), "--adapter", "caddyfile",
            "--address", f"unix/{self.settings.caddy_admin_socket}"], capture_output=True, text=True, timeout=30)
        if done.returncode:
            print(f"manager: caddy reload failed: {done.stderr.strip()[-500:]}", flush=True)

    async def start(self, instance_id: str) -> dict:
        config = self.get(instance_id)
        async with self.locks[instance_id]:
            self.check_ownership(config, self.configs())
            self.runtime[instance_id].set("starting")
            await asyncio.to_thread(self.supervisor.start, instance_id)
        return self.view(config)

    async def stop(self, instance_id: str) -> dict:
        config = self.get(instance_id)
        async with self.locks[instance_id]:
            rt = self.runtime[instance_id]
            rt.busy = True
            rt.set("stopping")
            try:
                await asyncio.to_thread(self.supervisor.stop, instance_id)
                rt.set("stopped")
            finally:
                rt.busy = False
        return self.view(config)

    async def restart(self, instance_id: str) -> dict:
        await self.stop(instance_id)
        return await self.start(instance_id)

    async def delete(self, instance_id: str) -> dict:
        config = self.get(instance_id)
        async with self.locks[instance_id]:
            saved = state.load(self.settings)
            saved.instances.pop(instance_id, None)
            state.save(self.settings, saved)
            await asyncio.to_thread(self.supervisor.stop, instance_id)
            render.program_path(self.settings, instance_id).unlink(missing_ok=True)
            await asyncio.to_thread(self.supervisor.apply_config)
            await self.reload_caddy()
            self.runtime.pop(instance_id, None)
        return {**config.model_dump(), "state": "deleted"}


def _message(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors())
    return str(exc)
