"""A fake outside world for the lifecycle (the interface of app/effects.py): supervisor, engines, files, Caddy,
GPUs, logs and the Hub, all in memory, and a fake router (its counts, drain and release). Engines follow their
model's name: `fail` never gets ready (its process exits), `slow` is never healthy, anything else is healthy once
running; an engine with --enable-sleep-mode can be put to sleep and woken."""
from __future__ import annotations

import asyncio
import itertools
import xmlrpc.client

from app.hub import Answer
from app.instance import InstanceConfig
from app.manager import Manager
from app.settings import Settings


class FakeEffects:
    def __init__(self, gpus: int = 0):
        self.procs: dict[str, dict] = {}
        self.programs: dict[str, InstanceConfig] = {}
        self.autostart: dict[str, bool] = {}
        self.gpus = gpus
        self.pids = itertools.count(1000)
        self.calls: list[tuple] = []
        self.removed_logs: list[str] = []
        self.hub_answers: list[Answer] = []
        self.spawn_errors: dict[str, str] = {}
        self.read_gate: asyncio.Event | None = None  # when set: processes() waits for it after reading
        self.asleep: set[int] = set()  # ports of engines put to sleep

    # supervisor
    def _info(self, name: str) -> dict:
        return self.procs.setdefault(name, {"name": name, "statename": "STOPPED", "pid": 0, "description": "",
                                            "spawnerr": ""})

    async def processes(self) -> dict[str, dict]:
        reading = {name: dict(info) for name, info in self.procs.items()}
        if self.read_gate is not None:
            await self.read_gate.wait()
        return reading

    async def info(self, name: str) -> dict | None:
        return dict(self.procs[name]) if name in self.procs else None

    async def start(self, name: str) -> None:
        self.calls.append(("start", name))
        if name in self.spawn_errors:
            self._info(name)["spawnerr"] = self.spawn_errors[name]
            raise xmlrpc.client.Fault(50, f"SPAWN_ERROR: {name}")
        info = self._info(name)
        model = self.programs[name].model
        info.update(statename="EXITED" if "fail" in model else "RUNNING", pid=next(self.pids),
                    description="exit status 1" if "fail" in model else "running")

    async def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self._info(name).update(statename="STOPPED", pid=0)

    async def apply(self, names: set[str]):
        self.calls.append(("apply", tuple(sorted(names))))
        for name in names:
            if name not in self.programs:
                self.procs.pop(name, None)
        return [], [], []

    def explain(self, exc: Exception) -> str:
        return repr(exc)

    # files
    def write_program(self, config: InstanceConfig, autostart: bool = True, name: str | None = None) -> bool:
        self.programs[name or config.id], self.autostart[name or config.id] = config, autostart
        return True

    def current_program(self, config: InstanceConfig, names) -> str | None:
        return next((n for n in names if self.programs.get(n) == config), None)

    def remove_program(self, name: str) -> None:
        self.programs.pop(name, None)

    def rendered_engines(self) -> set[str]:
        return set(self.programs)

    # engines, Caddy, GPUs, logs, Hub
    async def healthy(self, config: InstanceConfig) -> bool:
        """Some running program serves this model on this port."""
        return "slow" not in config.model and any(
            self.procs.get(name, {}).get("statename") == "RUNNING" and c.model == config.model and c.port == config.port
            for name, c in self.programs.items())

    async def sleep_engine(self, config: InstanceConfig, level: int = 1) -> None:
        self.calls.append(("sleep", config.id))
        assert "--enable-sleep-mode" in config.args
        self.asleep.add(config.port)

    async def wake_engine(self, config: InstanceConfig) -> None:
        self.calls.append(("wake", config.id))
        self.asleep.discard(config.port)

    async def is_sleeping(self, config: InstanceConfig) -> bool | None:
        return config.port in self.asleep

    def gpu_count(self) -> int:
        return self.gpus

    def gpu_reason(self) -> str | None:
        return None if self.gpus else "no GPU"

    async def engine_gpu_pids(self, name, config) -> set[int]:
        return set()

    async def wait_gpus_released(self, pids) -> bool:
        return True

    def last_log(self, name: str, count: int = 20) -> list[str]:
        return [f"{name}: last line"]

    def remove_log(self, name: str) -> None:
        self.removed_logs.append(name)

    async def hub_check(self, model: str) -> Answer:
        return self.hub_answers.pop(0) if self.hub_answers else Answer("ok")

    async def aclose(self) -> None:
        pass


class FakeRouter:
    """The router's control socket (app/router_client.py) in memory. `in_flight[id]` / `ports[id][port]` are set by
    a test; a drain waits (up to its timeout) until the test empties them. `down`: every call fails."""

    def __init__(self, fx: FakeEffects):
        self.fx = fx
        self.in_flight: dict[str, int] = {}
        self.queued: dict[str, int] = {}
        self.last_active: dict[str, float] = {}
        self.ports: dict[str, dict[int, int]] = {}
        self.down = False
        self.tables: list = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("router down")

    async def push(self, table) -> None:
        self._check()
        self.tables.append(table)

    async def status(self) -> dict[str, dict]:
        self._check()
        ids = set(self.in_flight) | set(self.queued) | set(self.last_active) | set(self.ports)
        return {i: {"in_flight": self.in_flight.get(i, 0), "queued": self.queued.get(i, 0),
                    "last_active": self.last_active.get(i, 0.0),
                    "ports": {str(p): n for p, n in self.ports.get(i, {}).items()}} for i in ids}

    async def drain(self, instance_id: str, timeout: float) -> int:
        self._check()
        self.fx.calls.append(("drain", instance_id))
        deadline = asyncio.get_running_loop().time() + timeout
        while self.in_flight.get(instance_id) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return self.in_flight.get(instance_id, 0)

    async def release(self, instance_id: str) -> None:
        self._check()
        self.fx.calls.append(("release", instance_id))

    async def aclose(self) -> None:
        pass


def make_manager(tmp_path, gpus: int = 0, **settings) -> tuple[Manager, FakeEffects]:
    config = Settings(APPLIANCE_ROOT=str(tmp_path), **settings)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    fx = FakeEffects(gpus)
    fx.router = FakeRouter(fx)
    return Manager(config, fx, fx.router), fx  # type: ignore[arg-type]


async def settle(manager: Manager) -> None:
    """Until every actor has nothing left in its inbox."""
    for _ in range(1000):
        await asyncio.sleep(0)
        if all(a.inbox.empty() for a in manager.actors.values()):
            await asyncio.sleep(0)
            return
