"""Start, stop and swap engines: the manager's logic over the saved state, the renderer and supervisor.

A swap: validate -> save the state and write the program file (atomically) -> stop the old engine
(its whole process group; with NVML, wait until its GPU memory is released) -> start the new one
-> wait until /health answers and /v1/models lists the model. If the new engine exits or times
out, the previous program and model come back (rollback, on by default).

Requests on one instance are serialised by a lock; a request still queued when a newer one
arrives is skipped ("superseded"), so the last accepted request wins and none is half-applied.
Different instances proceed in parallel. An accepted request claims its port and GPUs at once.

At its start the manager reconciles supervisor and Caddy with the saved state (the truth), so a
manager killed between saving and applying a change finishes it when supervisor brings it back.
"""
from __future__ import annotations

import asyncio
import configparser
import socket
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from supervisor.datatypes import dict_of_key_value_pairs

from app import engine, gpu, logs, portal_config, provisioning, render, state, stats
from app.settings import Settings
from app.supervisor import Supervisor

FAILED_STATES = {"EXITED", "FATAL", "BACKOFF"}
OWNING_PHASES = {"starting", "ready", "stopping"}  # an instance in these phases holds its GPUs and port
# Set by the manager itself: an API request gives them as fields (model, port), or never (host: 127.0.0.1 only).
RESERVED_ARGS = {"--model": "give the model as `model`", "--port": "give the port as `port`",
                 "--host": "engines listen on 127.0.0.1 only; Caddy publishes them"}
ENGINE_NOTE = engine.NOTE


class InstanceError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class SwapRequest(BaseModel):
    """PUT /api/instances/{id}: create or swap."""
    model_config = ConfigDict(extra="forbid")

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

    @field_validator("args")
    @classmethod
    def _no_reserved_args(cls, args: list[str]) -> list[str]:
        for arg in args:
            name = arg.split("=", 1)[0]
            if name in RESERVED_ARGS:
                raise ValueError(f"{name} is not allowed in args: {RESERVED_ARGS[name]}")
        return args

    @field_validator("gpus")
    @classmethod
    def _gpu_indices(cls, gpus: list[int] | None) -> list[int] | None:
        if gpus is not None and (any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus)):
            raise ValueError("gpus must be distinct GPU indices (0, 1, ...), or null for automatic")
        return gpus


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
    version: int = 0  # counts set(): a reading of supervisor taken before a change is stale

    def set(self, phase: str, reason: str | None = None) -> None:
        if phase != self.phase:
            self.since = time.time()
        self.phase, self.reason = phase, reason
        self.version += 1

    def changed_since(self, version: int) -> bool:
        """An operation is in flight or changed the phase since `version` was read."""
        return self.busy or self.version != version


class Manager:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.supervisor = Supervisor.of(settings)
        self.locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.runtime: dict[str, Runtime] = defaultdict(Runtime)
        # The latest accepted config of each instance whose request is not finished yet: it already claims
        # its port and GPUs, so that two requests in flight cannot be given the same ones.
        self.pending: dict[str, state.InstanceConfig] = {}
        self.tasks: set[asyncio.Task] = set()
        self.http = httpx.AsyncClient(timeout=2.0)

    # --- reading -------------------------------------------------------------
    def configs(self) -> dict[str, state.InstanceConfig]:
        """The saved instances."""
        return state.load(self.settings).instances

    def known(self) -> dict[str, state.InstanceConfig]:
        """The saved instances, and new ones accepted but not saved yet."""
        saved = self.configs()
        return {**saved, **{i: c for i, c in self.pending.items() if i not in saved}}

    def view(self, config: state.InstanceConfig) -> dict:
        rt = self.runtime[config.id]
        view = {**config.model_dump(), "served_model_name": config.name_served, "state": rt.phase,
                "reason": rt.reason, "since": rt.since, "restarts": rt.restarts,
                "pid": rt.pid if rt.pid and rt.phase in OWNING_PHASES else None,
                "uptime": round(time.time() - rt.since, 1) if rt.phase == "ready" else None,
                "command": engine.program(self.settings, config, gpu_count=gpu.gpu_count()).argv}
        if rt.phase in ("starting", "failed"):
            view["last_log"] = logs.tail_lines(self.log_path(config.id), 20)
        return view

    def get(self, instance_id: str) -> state.InstanceConfig:
        config = self.known().get(instance_id)
        if not config:
            raise InstanceError(404, f"no instance {instance_id!r}")
        return config

    def log_path(self, instance_id: str):
        return self.settings.log_dir / f"{instance_id}.log"

    def appliance_ports(self) -> dict[int, str]:
        """Ports that belong to the appliance (PORTAL_CONFIG), with what uses them; not for engines."""
        try:
            apps = portal_config.load(self.settings.portal_yaml)[1]
        except FileNotFoundError:
            return {}
        ports = {}
        for app in apps:
            ports[app.external_port] = f"the public port of {app.name!r}"
            ports[app.internal_port] = f"the internal port of {app.name!r}"
        return ports

    def default_port(self) -> int:
        try:
            api = portal_config.find(portal_config.load(self.settings.portal_yaml)[1], "vLLM")
        except FileNotFoundError:
            api = None
        return api.internal_port if api else 18000

    # --- monitoring ----------------------------------------------------------
    async def monitor(self, interval: float = 1.0) -> None:
        """Follow supervisor: phase of each idle instance, and restarts (a new pid the manager did not cause).

        A failure is logged once, not every round, and so is the recovery from it.
        """
        failing = None
        while True:
            try:
                await self.refresh()
                if failing:
                    print("manager: monitor: supervisord answers again", flush=True)
                failing = None
            except Exception as exc:  # noqa: BLE001 (keep monitoring through a supervisor hiccup)
                reason = self.supervisor.explain(exc)
                if reason != failing:
                    print(f"manager: monitor: {reason}", flush=True)
                failing = reason
            await asyncio.sleep(interval)

    async def refresh(self) -> None:
        """One round of monitoring. An instance whose phase an operation changed while supervisor was being
        read (or while its engine was probed) is left to that operation: the reading is older than its change."""
        versions = {i: rt.version for i, rt in self.runtime.items()}
        infos = {p["name"]: p for p in await asyncio.to_thread(self.supervisor.all)}
        waiting = provisioning.waiting(self.settings)  # engines held back until provisioning ends
        for config in self.configs().values():
            rt, info = self.runtime[config.id], infos.get(config.id)
            if rt.changed_since(versions.get(config.id, 0)):
                continue
            pid = info["pid"] if info else 0
            restarted = bool(pid and rt.pid and pid != rt.pid)
            if restarted:
                rt.restarts += 1
            rt.pid = pid or rt.pid
            if not info:
                continue
            phase, reason = self.phase_of(config, info, rt, waiting)
            if phase == "probe":  # running: probe only until ready (and after a restart), not to flood its log
                if rt.phase == "ready" and not restarted:
                    continue
                phase = "ready" if await self.healthy(config) else "starting"
                if rt.changed_since(versions.get(config.id, 0)):
                    continue
            rt.set(phase, reason)

    @staticmethod
    def phase_of(config: state.InstanceConfig, info: dict, rt: Runtime, waiting: set[str]) -> tuple[str, str | None]:
        """The phase supervisor's state of an idle engine means ("probe": running, ask the engine)."""
        name = info["statename"]
        if name in ("RUNNING", "STARTING"):
            return "probe", None
        if name == "BACKOFF":  # exited too soon; supervisor tries again
            return "starting", f"restarting: {info.get('spawnerr') or info['description']}"
        if name in FAILED_STATES:
            return "failed", (rt.reason if rt.phase == "failed" and rt.reason
                              else f"the engine exited: {info.get('spawnerr') or info['description']}")
        if name == "STOPPING":
            return "stopping", None
        if config.id in waiting and name == "STOPPED":
            return "waiting", provisioning.WAITING_REASON
        if rt.phase == "failed":
            return "failed", rt.reason
        return "stopped", None

    async def healthy(self, config: state.InstanceConfig) -> bool:
        base = f"http://127.0.0.1:{config.port}"
        try:
            if (await self.http.get(f"{base}/health")).status_code != 200:
                return False
            models = (await self.http.get(f"{base}/v1/models")).json()
            return any(m.get("id") == config.name_served for m in models.get("data", []))
        except (httpx.HTTPError, ValueError):
            return False

    async def reconcile(self) -> None:
        """At the manager's start: make supervisor's programs and Caddy's routes match the saved state again.

        The saved state is the truth. If a previous manager died between saving a config and applying it,
        the program file is rewritten and the process group replaced; unchanged programs are left alone.
        """
        saved = self.configs()
        names = set(saved)
        for path in self.settings.programs_dir.glob("*.conf"):
            head = path.read_text(errors="replace").split("\n", 1)[0]
            if ENGINE_NOTE in head and path.stem not in saved:
                path.unlink()
                names.add(path.stem)
        count = gpu.gpu_count()
        for config in saved.values():
            path = render.program_path(self.settings, config.id)
            current = path.read_text() if path.exists() else None
            autostart = current is None or "\nautostart=false\n" not in current  # kept as boot decided
            program = engine.program(self.settings, config, gpu_count=count, autostart=autostart)
            if current is None or not same_program(current, program):
                render.write_atomic(path, render.program_conf(self.settings, program))
        added, changed, removed = await asyncio.to_thread(self.supervisor.apply_config, names)
        if added or changed or removed:
            print(f"manager: reconciled programs with the saved state: added {added}, replaced {changed}, "
                  f"removed {removed}", flush=True)
        routes = render.caddy_routes(self.settings, saved.values())
        file = self.settings.caddy_routes_file
        if not file.exists() or file.read_text() != routes:
            await self.reload_caddy()
        await self.refresh()

    # --- changing ------------------------------------------------------------
    def build(self, instance_id: str, request: SwapRequest) -> state.InstanceConfig:
        """Validate a request into a config (ValueError: bad input; InstanceError 409: a port or GPU is taken)."""
        claims = {**self.configs(), **self.pending}
        port = request.port
        if instance_id == state.DEFAULT_INSTANCE:
            if port is not None and port != self.default_port():
                raise ValueError(f"the port of `vllm` is the vLLM API's internal port ({self.default_port()}); "
                                 "leave `port` out")
            port = self.default_port()
        elif port is None:
            port = claims[instance_id].port if instance_id in claims else self.free_port(claims)
        config = state.InstanceConfig(id=instance_id, model=request.model, args=request.args, env=request.env,
                                      gpus=request.gpus, share_gpus=request.share_gpus, port=port,
                                      served_model_name=request.served_model_name)
        render.environment_line(engine.environment(self.settings, config))  # what supervisor could not carry
        self.check_gpus_exist(config)
        self.check_ownership(config, claims)
        return config

    def free_port(self, claims: dict[str, state.InstanceConfig]) -> int:
        """The first port of ENGINE_PORTS that no instance claims, the appliance does not use and nothing listens on."""
        taken = {c.port for c in claims.values()} | set(self.appliance_ports())
        for port in self.settings.engine_port_range:
            if port in taken:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise InstanceError(409, f"no free port left in ENGINE_PORTS ({self.settings.engine_ports})")

    def check_gpus_exist(self, config: state.InstanceConfig) -> None:
        if not config.gpus:
            return
        count = gpu.gpu_count()
        if count == 0:
            raise ValueError(f"gpus {config.gpus} given, but there is no NVIDIA GPU here ({gpu.reason()}); "
                             "leave gpus out (null)")
        missing = [g for g in config.gpus if g >= count]
        if missing:
            raise ValueError(f"GPU {missing[0]} does not exist: there are {count} GPUs (0-{count - 1})")

    def check_ownership(self, config: state.InstanceConfig, claims: dict[str, state.InstanceConfig]) -> None:
        """409 if another instance has this port, or (while it runs) one of these GPUs and they do not both share."""
        if config.id != state.DEFAULT_INSTANCE and config.port in (appliance := self.appliance_ports()):
            raise InstanceError(409, f"port {config.port} is {appliance[config.port]}; choose another or leave it out")
        count = gpu.gpu_count()
        mine = set(config.gpus) if config.gpus is not None else set(range(count))
        for other in claims.values():
            if other.id == config.id:
                continue
            if other.port == config.port:
                raise InstanceError(409, f"port {config.port} is used by instance {other.id!r}")
            if self.runtime[other.id].phase not in OWNING_PHASES:
                continue
            theirs = set(other.gpus) if other.gpus is not None else set(range(count))
            shared = mine & theirs
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
            raise InstanceError(422, error_message(exc)) from None
        seq = self.accept(instance_id)
        self.pending[instance_id] = config
        self.runtime[instance_id].set("starting")
        job = asyncio.create_task(self._swap(config, request, seq))
        self.tasks.add(job)
        job.add_done_callback(self._done)
        if request.wait:
            return await asyncio.shield(job)
        return {**self.view(config), "accepted": seq}

    def _done(self, job: asyncio.Task) -> None:
        self.tasks.discard(job)
        if not job.cancelled() and job.exception() is not None:  # already in the instance's reason; not re-raised
            print(f"manager: swap: {job.exception()!r}", flush=True)

    async def _swap(self, config: state.InstanceConfig, request: SwapRequest, seq: int) -> dict:
        rt = self.runtime[config.id]
        try:
            async with self.locks[config.id]:
                if seq != rt.seq:
                    return {**self.view(config), "result": "superseded by a later request"}
                return await self._swap_locked(config, request, rt)
        finally:
            if rt.seq == seq:
                self.pending.pop(config.id, None)

    async def _swap_locked(self, config: state.InstanceConfig, request: SwapRequest, rt: Runtime) -> dict:
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
                back, _ = await self._wait_ready(old, max(request.timeout, 600))
                rt.set("ready" if back else "failed",
                       f"swap to {config.model} failed: {reason}; rolled back to {old.model}")
                return {**self.view(old), "result": "rolled back", "error": reason, "failed_log": last_log}
            await asyncio.to_thread(self.supervisor.stop, config.id)
            rt.set("failed", reason)
            return {**self.view(config), "result": "failed", "error": reason, "failed_log": last_log}
        except InstanceError as exc:
            if rt.phase == "starting":
                rt.set("ready" if old and await self.healthy(old) else "failed", exc.message)
            raise
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
        gpu_pids = await asyncio.to_thread(self._gpu_pids, config.id, previous)
        await asyncio.to_thread(self.supervisor.stop, config.id)
        if gpu_pids and not await asyncio.to_thread(gpu.wait_released, gpu_pids, self.settings.gpu_release_timeout):
            print(f"manager: {config.id}: the old engine's GPU processes {sorted(gpu_pids)} still hold GPU memory "
                  f"after {self.settings.gpu_release_timeout:.0f} s; starting the new engine anyway", flush=True)
        await asyncio.to_thread(self.supervisor.apply_config, {config.id})
        await asyncio.to_thread(self.supervisor.start, config.id)
        if previous is None or previous.port != config.port:
            await self.reload_caddy()

    def _gpu_pids(self, instance_id: str, previous: state.InstanceConfig | None) -> set[int]:
        """The GPU processes of this instance's running engine (its process and its children), by NVML."""
        info = self.supervisor.info(instance_id)
        root = info["pid"] if info else 0
        if not root or previous is None:
            return set()
        on_gpus = gpu.engine_pids(previous.gpus)
        mine = {pid for pid in on_gpus if stats.owner(pid, {root: instance_id})}
        if mine or previous.share_gpus:
            return mine
        # In a container NVML reports the host's pids, which /proc here does not know. On GPUs this engine held
        # alone (no other running instance may hold them), such processes are its own.
        return {pid for pid in on_gpus if stats.foreign(pid)}

    def gpu_holders(self) -> dict[int, str]:
        """GPU index -> the running instance that holds it alone (not shared): the owner of its processes
        whose pids NVML gives from another pid namespace (a container)."""
        count, holders = gpu.gpu_count(), {}
        for config in self.configs().values():
            if self.runtime[config.id].phase in OWNING_PHASES and not config.share_gpus:
                for index in (config.gpus if config.gpus is not None else range(count)):
                    holders[index] = config.id
        return holders

    async def _wait_ready(self, config: state.InstanceConfig, timeout: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await asyncio.to_thread(self.supervisor.info, config.id)
            if info and info["statename"] in FAILED_STATES:
                return False, f"the engine exited ({info.get('spawnerr') or info['description']})"
            if info and info["pid"]:
                self.runtime[config.id].pid = info["pid"]
            if await self.healthy(config):
                return True, ""
            await asyncio.sleep(0.25)
        return False, f"not ready after {timeout:g} s"

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
        self.accept(instance_id)  # a swap still queued is superseded by this later request
        async with self.locks[instance_id]:
            config = self.get(instance_id)
            self.check_ownership(config, {**self.configs(), **self.pending})
            rt = self.runtime[instance_id]
            rt.busy = True
            rt.set("starting")
            try:
                await asyncio.to_thread(self.supervisor.start, instance_id)
                info = await asyncio.to_thread(self.supervisor.info, instance_id)
                rt.pid = (info or {}).get("pid") or rt.pid  # a start we asked for is no restart
            finally:
                rt.busy = False
        return self.view(config)

    async def stop(self, instance_id: str) -> dict:
        config = self.get(instance_id)
        self.accept(instance_id)
        async with self.locks[instance_id]:
            config = self.get(instance_id)
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
        self.accept(instance_id)
        async with self.locks[instance_id]:
            self.pending.pop(instance_id, None)
            saved = state.load(self.settings)
            config = saved.instances.pop(instance_id, config)
            state.save(self.settings, saved)
            await asyncio.to_thread(self.supervisor.stop, instance_id)
            render.program_path(self.settings, instance_id).unlink(missing_ok=True)
            await asyncio.to_thread(self.supervisor.apply_config, {instance_id})
            await self.reload_caddy()
            self.runtime.pop(instance_id, None)
        return {**config.model_dump(), "state": "deleted"}


def same_program(text: str, program: render.Program) -> bool:
    """Whether a program file already runs this command with this environment (in any order of its variables)."""
    parser = configparser.RawConfigParser(interpolation=None)
    try:
        parser.read_string(text)
        section = f"program:{program.name}"
        command = parser.get(section, "command")
        environment = parser.get(section, "environment", fallback="")
        env = dict_of_key_value_pairs(environment.replace("%%", "%")) if environment else {}
    except (configparser.Error, ValueError):
        return False
    return command == render.command_line(program.argv) and env == program.environment


def error_message(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors())
    return str(exc)
